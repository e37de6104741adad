package fuseloop

import (
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/pkg/nbdattach"
)

// countingBackend is a raw file backend that counts the calls a test
// wants to see arrive, and can refuse writes with a chosen error.
type countingBackend struct {
	*nbdattach.FileBackend
	path                     string
	flushes, trims, zeroes   atomic.Int64
	holeZeroes, noHoleZeroes atomic.Int64
	writeErr, flushErr       atomic.Pointer[error]
}

func newBackend(t *testing.T, size int64) *countingBackend {
	t.Helper()
	path := filepath.Join(t.TempDir(), "backend.raw")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
	fb, err := nbdattach.OpenFileBackend(path, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fb.Close() })
	return &countingBackend{FileBackend: fb, path: path}
}

func (b *countingBackend) WriteAt(p []byte, off int64) (int, error) {
	if e := b.writeErr.Load(); e != nil {
		return 0, *e
	}
	return b.FileBackend.WriteAt(p, off)
}

func (b *countingBackend) Flush() error {
	b.flushes.Add(1)
	if e := b.flushErr.Load(); e != nil {
		return *e
	}
	return b.FileBackend.Flush()
}

func (b *countingBackend) Trim(off, n int64) error {
	b.trims.Add(1)
	return b.FileBackend.Trim(off, n)
}

func (b *countingBackend) WriteZeroes(off, n int64, f nbdattach.ZeroFlags) error {
	b.zeroes.Add(1)
	if f&nbdattach.ZeroNoHole != 0 {
		b.noHoleZeroes.Add(1)
	} else {
		b.holeZeroes.Add(1)
	}
	return b.FileBackend.WriteZeroes(off, n, f)
}

func (b *countingBackend) failWrites(err error) { b.writeErr.Store(&err) }
