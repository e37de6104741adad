package driver

import (
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"

	"github.com/csi-qcow2/csi-qcow2/pkg/driver/store"
	"github.com/csi-qcow2/csi-qcow2/pkg/nbdattach"
)

// Reasons of a staged volume's condition that only its attachment sees.
const (
	// ReasonNoSpace: a write could not be stored, the store's filesystem
	// being full. It clears at the next write that is stored.
	ReasonNoSpace = "NoSpace"
	// ReasonIOErrors: a read or write failed otherwise. It stays until
	// the volume is unstaged.
	ReasonIOErrors = "IOErrors"
)

// ioWatch is the backend a staged volume is attached with: the volume's
// own, with the outcome of every request noted for its health. Thin
// volumes can outgrow the store's filesystem; the guest then gets ENOSPC
// (fuseloop's errno mapping) and the CO sees why in the volume's health
// and the csi_qcow2_volume_abnormal metric.
type ioWatch struct {
	nbdattach.Backend

	mu        sync.Mutex
	noSpace   int       // writes refused for lack of space since the last stored one
	noSpaceAt time.Time // the first of them
	ioErrors  int
	lastErr   error
}

func (w *ioWatch) ReadAt(p []byte, off int64) (int, error) {
	n, err := w.Backend.ReadAt(p, off)
	w.note(false, err)
	return n, err
}

// ReadAtNoWait passes the volume's ReadAtNoWait on (nbdattach.NoWaitReader:
// the NBD server's request reader then serves cached reads itself instead
// of starting a goroutine per READ). A volume without one says
// ErrNoWaitUnsupported, and the server stops asking. Declining to read
// without waiting (ErrWouldBlock, ErrNoWaitUnsupported) is no I/O error:
// the server reads the range again with ReadAt, which is watched as usual;
// any other error is noted like ReadAt's.
func (w *ioWatch) ReadAtNoWait(p []byte, off int64) (int, error) {
	nw, ok := w.Backend.(nbdattach.NoWaitReader)
	if !ok {
		return 0, nbdattach.ErrNoWaitUnsupported
	}
	n, err := nw.ReadAtNoWait(p, off)
	if err != nil && !errors.Is(err, nbdattach.ErrWouldBlock) && !errors.Is(err, nbdattach.ErrNoWaitUnsupported) {
		w.note(false, err)
	}
	return n, err
}

func (w *ioWatch) WriteAt(p []byte, off int64) (int, error) {
	n, err := w.Backend.WriteAt(p, off)
	w.note(true, err)
	return n, err
}

func (w *ioWatch) WriteZeroes(off, n int64, flags nbdattach.ZeroFlags) error {
	err := w.Backend.WriteZeroes(off, n, flags)
	if !errors.Is(err, nbdattach.ErrNotFast) {
		w.note(true, err)
	}
	return err
}

func (w *ioWatch) Trim(off, n int64) error {
	err := w.Backend.Trim(off, n)
	w.note(true, err)
	return err
}

func (w *ioWatch) Flush() error {
	err := w.Backend.Flush()
	w.note(true, err)
	return err
}

// note records one request's outcome. A stored write ends a spell of
// refused ones: space was found again.
func (w *ioWatch) note(write bool, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case err == nil:
		if write {
			w.noSpace = 0
		}
	case isNoSpace(err):
		if w.noSpace == 0 {
			w.noSpaceAt = time.Now()
		}
		w.noSpace++
	case errors.Is(err, nbdattach.ErrReadOnly), errors.Is(err, nbdattach.ErrNotSupported):
		// The guest asked for what the volume does not offer.
	default:
		w.ioErrors++
		w.lastErr = err
	}
}

// condition is what the attachment has seen, as a volume condition.
func (w *ioWatch) condition() store.Condition {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.noSpace > 0:
		return store.Condition{Abnormal: true, Reason: ReasonNoSpace, Message: fmt.Sprintf(
			"%d writes refused with ENOSPC since %s: the store's filesystem is full; they succeed again once space is freed",
			w.noSpace, w.noSpaceAt.UTC().Format(time.RFC3339))}
	case w.ioErrors > 0:
		return store.Condition{Abnormal: true, Reason: ReasonIOErrors, Message: fmt.Sprintf(
			"%d I/O errors since the volume was staged, the last: %v", w.ioErrors, w.lastErr)}
	}
	return store.Condition{}
}

func isNoSpace(err error) bool {
	return errors.Is(err, nbdattach.ErrNoSpace) || errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// Resize passes a resize on to the volume's backend (nbdattach.Resizer,
// which the NBD server asks for when its export grows).
func (w *ioWatch) Resize(size int64) error {
	r, ok := w.Backend.(nbdattach.Resizer)
	if !ok {
		return nbdattach.ErrNotSupported
	}
	return r.Resize(size)
}
