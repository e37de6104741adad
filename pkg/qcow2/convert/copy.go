package convert

import (
	"fmt"
	"io"
	"sort"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// copyCtx is what every copy loop shares: its workers, the progress, the
// source's read-ahead and the target's write-behind.
type copyCtx struct {
	pl   pipeline
	prog *progress
	ra   *readAhead
	wb   *writeBehind
	// lo, hi: the window of the source being copied (mapWindow).
	lo, hi int64
}

// readSpan reads span i of spans into the worker's scratch buffer (zeros
// for a span known to read as zeros, without reading it).
func readSpan(in Source, spans []span, i int, scratch *[]byte, cx copyCtx) ([]byte, error) {
	cx.ra.prepared(spans, i)
	s := spans[i]
	p := scratchBuf(scratch, s.n)
	if s.zero {
		clear(p)
		return p, nil
	}
	return p, readSource(in, p, s.off)
}

// copyExtents copies every extent that may hold data from in to out on
// the pipeline's workers. With sparse > 0, extents known to read as zeros
// are skipped and so is every sparse-aligned block of read data that is
// all zeros; with sparse == 0 everything is written.
func copyExtents(in Source, out io.WriterAt, exts []qcow2.Extent, sparse int64, cx copyCtx) error {
	spans, skipped := extentSpans(exts, max(copyChunk, sparse), sparse == 0)
	cx.prog.add(skipped)
	return cx.pl.run(len(spans), func(i int, scratch *[]byte) (func() error, error) {
		s := spans[i]
		p, err := readSpan(in, spans, i, scratch, cx)
		if err != nil {
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
			cx.prog.add(s.n)
			return nil
		}, nil
	})
}

// readSource reads [off, off+len(p)) of the source.
func readSource(in io.ReaderAt, p []byte, off int64) error {
	if _, err := in.ReadAt(p, off); err != nil && err != io.EOF {
		return fmt.Errorf("error while reading at byte %d: %w", off, err)
	}
	return nil
}

// writeOut writes p at off of the target.
func writeOut(out io.WriterAt, p []byte, off int64) error {
	if _, err := out.WriteAt(p, off); err != nil {
		return fmt.Errorf("error while writing at byte %d: %w", off, err)
	}
	return nil
}

// readExtents reads [off, off+len(p)) of the source, not reading ranges
// its map says are zeros. Bytes no extent covers read as zeros.
func readExtents(in io.ReaderAt, exts []qcow2.Extent, p []byte, off int64) error {
	end := off + int64(len(p))
	first := sort.Search(len(exts), func(i int) bool { return exts[i].Start+exts[i].Length > off })
	pos := off
	for _, e := range exts[first:] {
		if e.Start >= end {
			break
		}
		a, b := max(off, e.Start), min(end, e.Start+e.Length)
		if a >= b {
			continue
		}
		clear(p[pos-off : a-off])
		pos = b
		q := p[a-off : b-off]
		if zeroExt(e) {
			clear(q)
			continue
		}
		if err := readSource(in, q, a); err != nil {
			return err
		}
	}
	clear(p[pos-off:])
	return nil
}
