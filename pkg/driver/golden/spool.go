package golden

import (
	"context"
	"io"
	"os"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2/convert"
)

// Spool I/O sizes: reads of spoolChunk, holes left for every all-zero
// spoolBlock (so that a sparse image takes only its data on disk, and the
// copy after it skips the holes).
const (
	spoolChunk = 1 << 20
	spoolBlock = 64 << 10
)

// spool writes the stream r into the empty file f, leaving holes where r
// is all zeros, and returns its length. It stops at ctx's end and at the
// guard's bounds; errors of r are returned as they are.
func spool(ctx context.Context, r io.Reader, f *os.File, g bombGuard) (int64, error) {
	buf := make([]byte, spoolChunk)
	var total, data int64
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		n, rerr := fill(r, buf)
		for off := 0; off < n; off += spoolBlock {
			b := buf[off:min(off+spoolBlock, n)]
			if !convert.IsZero(b) {
				if _, err := f.WriteAt(b, total+int64(off)); err != nil {
					return total, localErr{err}
				}
				data += int64(len(b))
			}
		}
		total += int64(n)
		if err := g.check(total, data); err != nil {
			return total, err
		}
		switch rerr {
		case nil:
			continue
		case io.EOF:
			// A hole at the end is not written: the length comes from
			// the truncate.
			if err := f.Truncate(total); err != nil {
				return total, localErr{err}
			}
			return total, nil
		default:
			return total, rerr
		}
	}
}

// localErr is a failure of the local file system, not of the stream:
// transient, whatever the error.
type localErr struct{ error }

func (e localErr) Unwrap() error { return e.error }

// fill reads into p until it is full or r fails, and returns r's error as
// it is: unlike io.ReadFull it does not turn a decompressor's
// io.ErrUnexpectedEOF (a truncated stream) into an ordinary end.
func fill(r io.Reader, p []byte) (int, error) {
	n := 0
	for n < len(p) {
		m, err := r.Read(p[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}
