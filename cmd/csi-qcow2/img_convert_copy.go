package main

import (
	"bytes"
	"io"
	"sort"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// convertSource is what convert reads: an opened image, or one of its
// internal snapshots (-l).
type convertSource interface {
	io.ReaderAt
	Size() int64
	Map(off, n int64) ([]qcow2.Extent, error)
}

// copyChunk is the largest request convert reads or writes at once, as
// qemu-img's 2 MiB buffers.
const copyChunk = 2 << 20

// copyCtx is what every copy loop shares: its workers, the progress bar,
// the source's read-ahead and the output's write-behind.
type copyCtx struct {
	pl  pipeline
	bar *progress
	ra  *readAhead
	wb  *writeBehind
}

// span is one convert request: guest bytes [off, off+n); zero when the
// source's map says the whole span reads as zeros.
type span struct {
	off, n int64
	zero   bool
}

// zeroExt reports whether the map says e reads as zeros without data.
func zeroExt(e qcow2.Extent) bool { return e.Zero && !e.Data }

// extentSpans cuts extents into requests of at most chunk bytes that do
// not cross a multiple of chunk. Zero extents become zero spans if
// keepZero; otherwise they are left out and their length is returned.
func extentSpans(exts []qcow2.Extent, chunk int64, keepZero bool) (out []span, skipped int64) {
	for _, e := range exts {
		z := zeroExt(e)
		if z && !keepZero {
			skipped += e.Length
			continue
		}
		for off, end := e.Start, e.Start+e.Length; off < end; {
			n := min(end, (off/chunk+1)*chunk) - off
			out = append(out, span{off, n, z})
			off += n
		}
	}
	return out, skipped
}

// chunkSpans cuts [0, size) into chunk-aligned requests (chunk is a
// multiple of the cluster size, so clusters stay whole); a span is zero
// when only zero extents cover it.
func chunkSpans(exts []qcow2.Extent, size, chunk int64) []span {
	var out []span
	ei := 0
	for off := int64(0); off < size; off += chunk {
		n := min(chunk, size-off)
		for ei < len(exts) && exts[ei].Start+exts[ei].Length <= off {
			ei++
		}
		zero := true
		for j := ei; j < len(exts) && exts[j].Start < off+n; j++ {
			if !zeroExt(exts[j]) {
				zero = false
				break
			}
		}
		out = append(out, span{off, n, zero})
	}
	return out
}

// scratchBuf returns *s resized to n bytes, growing it when needed.
func scratchBuf(s *[]byte, n int64) []byte {
	if int64(cap(*s)) < n {
		*s = make([]byte, n)
	}
	return (*s)[:n]
}

// copyExtents copies every extent that may hold data from in to out on
// the pipeline's workers. With sparse > 0, extents known to read as zeros
// are skipped and so is every sparse-aligned block of read data that is
// all zeros; with sparse == 0 everything is written.
func copyExtents(in convertSource, out io.WriterAt, exts []qcow2.Extent, sparse int64, cx copyCtx) error {
	spans, skipped := extentSpans(exts, max(copyChunk, sparse), sparse == 0)
	cx.bar.add(skipped)
	return cx.pl.run(len(spans), func(i int, scratch *[]byte) (func() error, error) {
		cx.ra.prepared(spans, i)
		s := spans[i]
		p := scratchBuf(scratch, s.n)
		if s.zero {
			clear(p)
		} else if err := readSource(in, p, s.off); err != nil {
			return nil, err
		}
		runs := nonZeroRuns(p, s.off, sparse)
		return func() error {
			for _, r := range runs {
				if err := writeOut(out, p[r.start-s.off:r.end-s.off], r.start); err != nil {
					return err
				}
				cx.wb.wrote(r.end - r.start)
			}
			cx.bar.add(s.n)
			return nil
		}, nil
	})
}

// readSource reads [off, off+len(p)) of the source.
func readSource(in io.ReaderAt, p []byte, off int64) error {
	if _, err := in.ReadAt(p, off); err != nil && err != io.EOF {
		return failf("error while reading at byte %d: %v", off, err)
	}
	return nil
}

// writeOut writes p at off of the output.
func writeOut(out io.WriterAt, p []byte, off int64) error {
	if _, err := out.WriteAt(p, off); err != nil {
		return failf("error while writing at byte %d: %v", off, err)
	}
	return nil
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
		if isZero(p[i : i+n]) {
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

// isZero reports whether every byte of b is zero: b[0] is zero and every
// byte equals the one before it (bytes.Equal is vectorised).
func isZero(b []byte) bool {
	return len(b) == 0 || b[0] == 0 && bytes.Equal(b[1:], b[:len(b)-1])
}

// readExtents reads [off, off+len(p)) of the source, not reading ranges
// its map says are zeros.
func readExtents(in io.ReaderAt, exts []qcow2.Extent, p []byte, off int64) error {
	end := off + int64(len(p))
	first := sort.Search(len(exts), func(i int) bool { return exts[i].Start+exts[i].Length > off })
	for _, e := range exts[first:] {
		if e.Start >= end {
			break
		}
		a, b := max(off, e.Start), min(end, e.Start+e.Length)
		if a >= b {
			continue
		}
		q := p[a-off : b-off]
		if zeroExt(e) {
			clear(q)
			continue
		}
		if err := readSource(in, q, a); err != nil {
			return err
		}
	}
	return nil
}
