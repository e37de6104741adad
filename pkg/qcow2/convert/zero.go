package convert

import "bytes"

// IsZero reports whether every byte of b is zero: b[0] is zero and every
// byte equals the one before it (bytes.Equal is vectorised, so this runs
// at memory speed).
func IsZero(b []byte) bool {
	return len(b) == 0 || b[0] == 0 && bytes.Equal(b[1:], b[:len(b)-1])
}

// byteRun is [start, end) in guest bytes.
type byteRun struct{ start, end int64 }

// nonZeroRuns returns the runs of p (guest bytes at off) to write: all of
// p when sparse == 0, else the runs of sparse-aligned blocks that are not
// all zeros.
func nonZeroRuns(p []byte, off, sparse int64) []byteRun {
	end := off + int64(len(p))
	if sparse == 0 {
		return []byteRun{{off, end}}
	}
	var runs []byteRun
	runStart := int64(-1)
	for i := int64(0); i < int64(len(p)); {
		n := min(int64(len(p))-i, sparse-(off+i)%sparse)
		if IsZero(p[i : i+n]) {
			if runStart >= 0 {
				runs = append(runs, byteRun{off + runStart, off + i})
				runStart = -1
			}
		} else if runStart < 0 {
			runStart = i
		}
		i += n
	}
	if runStart >= 0 {
		runs = append(runs, byteRun{off + runStart, end})
	}
	return runs
}
