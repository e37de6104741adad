package golden

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
)

// fetchReader reads the bytes of a source as they arrive: it hashes and
// counts exactly them, refuses more than max of them, and keeps the
// transport's own error apart from what the readers above it make of the
// bytes (so that a network failure is not taken for bad content).
type fetchReader struct {
	r        io.Reader
	h        hash.Hash
	n        int64
	max      int64
	onRead   func(n int64) // progress: bytes fetched so far
	transErr error         // the first error of r other than EOF
}

func newFetchReader(r io.Reader, max int64, onRead func(int64)) *fetchReader {
	return &fetchReader{r: r, h: sha256.New(), max: max, onRead: onRead}
}

func (f *fetchReader) Read(p []byte) (int, error) {
	if f.n > f.max {
		return 0, f.tooBig()
	}
	// One byte past max is read to tell "exactly max" from "more".
	if room := f.max + 1 - f.n; int64(len(p)) > room {
		p = p[:room]
	}
	n, err := f.r.Read(p)
	f.h.Write(p[:n])
	f.n += int64(n)
	if n > 0 && f.onRead != nil {
		f.onRead(f.n)
	}
	if f.n > f.max {
		return n, f.tooBig()
	}
	if err != nil && err != io.EOF && f.transErr == nil {
		f.transErr = err
	}
	return n, err
}

func (f *fetchReader) tooBig() error {
	return fmt.Errorf("%w: the source is larger than %d bytes (MaxDownloadBytes)", errTooBig, f.max)
}

// sum is the hex SHA-256 of the bytes read so far.
func (f *fetchReader) sum() string { return hex.EncodeToString(f.h.Sum(nil)) }

// drain reads the rest of the source (so that its checksum covers all of
// it) and returns how many bytes that was.
func (f *fetchReader) drain() (int64, error) {
	return io.Copy(io.Discard, f)
}
