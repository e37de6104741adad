package driver

import (
	"errors"
	"fmt"
	"syscall"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/qcow2nbd"
	"github.com/csi-qcow2/csi-qcow2/pkg/nbdattach"
)

// noWaitFake answers ReadAtNoWait with err; the rest of the Backend is
// never called.
type noWaitFake struct {
	nbdattach.Backend
	err   error
	calls int
}

func (f *noWaitFake) ReadAtNoWait(p []byte, off int64) (int, error) {
	f.calls++
	if f.err != nil {
		return 0, f.err
	}
	return len(p), nil
}

// The backend a volume is attached with keeps the adapter's ReadAtNoWait,
// so the NBD server's reader serves cached reads without a goroutine.
// Declining to read without waiting is not an I/O error of the volume; a
// real error is, as for ReadAt.
func TestIOWatchReadAtNoWait(t *testing.T) {
	noWait(t, &ioWatch{Backend: (*qcow2nbd.Image)(nil)})
	p := make([]byte, 4096)
	for _, tc := range []struct {
		err    error
		reason string
	}{
		{nil, ""},
		{nbdattach.ErrWouldBlock, ""},
		{errors.Join(nbdattach.ErrWouldBlock, syscall.EIO), ""}, // the adapter's way of declining
		{fmt.Errorf("x: %w", nbdattach.ErrNoWaitUnsupported), ""},
		{syscall.EIO, ReasonIOErrors},
	} {
		f := &noWaitFake{err: tc.err}
		w := &ioWatch{Backend: f}
		n, err := noWait(t, w).ReadAtNoWait(p, 0)
		if f.calls != 1 || err != tc.err || (err == nil && n != len(p)) {
			t.Errorf("%v: ReadAtNoWait not passed on: %d calls, %d, %v", tc.err, f.calls, n, err)
		}
		if got := w.condition().Reason; got != tc.reason {
			t.Errorf("%v: condition %q, want %q", tc.err, got, tc.reason)
		}
	}
	// A volume without ReadAtNoWait: the server is told to stop asking.
	w := &ioWatch{Backend: struct{ nbdattach.Backend }{}}
	if _, err := noWait(t, w).ReadAtNoWait(p, 0); !errors.Is(err, nbdattach.ErrNoWaitUnsupported) {
		t.Errorf("without the volume's ReadAtNoWait: %v, want ErrNoWaitUnsupported", err)
	}
	if got := w.condition().Reason; got != "" {
		t.Errorf("without the volume's ReadAtNoWait: condition %q", got)
	}
}

// noWait returns w as the NBD server sees it, an nbdattach.NoWaitReader.
func noWait(t *testing.T, w *ioWatch) nbdattach.NoWaitReader {
	t.Helper()
	nw, ok := nbdattach.Backend(w).(nbdattach.NoWaitReader)
	if !ok {
		t.Fatal("ioWatch is not an nbdattach.NoWaitReader: the NBD server never calls ReadAtNoWait for staged volumes")
	}
	return nw
}
