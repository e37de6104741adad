package convert

import "github.com/csi-qcow2/csi-qcow2/pkg/qcow2"

// copyChunk is the largest request a copy reads or writes at once, as
// qemu-img's 2 MiB buffers.
const copyChunk = 2 << 20

// span is one copy request: guest bytes [off, off+n); zero when the
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

// chunkSpans cuts [start, end) into chunk-aligned requests (chunk is a
// multiple of the cluster size, so clusters stay whole; start is a
// multiple of chunk); a span is zero when only zero extents cover it.
func chunkSpans(exts []qcow2.Extent, start, end, chunk int64) []span {
	var out []span
	ei := 0
	for off := start; off < end; off += chunk {
		n := min(chunk, end-off)
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

// clusterChunk is the request size for copies that work in whole
// clusters of cs bytes: copyChunk rounded up to a multiple of cs.
func clusterChunk(cs int64) int64 { return (copyChunk + cs - 1) / cs * cs }

// scratchBuf returns *s resized to n bytes, growing it when needed.
func scratchBuf(s *[]byte, n int64) []byte {
	if int64(cap(*s)) < n {
		*s = make([]byte, n)
	}
	return (*s)[:n]
}
