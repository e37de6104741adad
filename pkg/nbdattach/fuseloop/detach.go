package fuseloop

import (
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// ErrBusy: the loop device is still open by someone else (a mounted file
// system, a process), so it cannot go yet. The attachment keeps serving
// it; call Detach again once the user let go.
var ErrBusy = errors.New("fuseloop: loop device still in use")

// ErrWriteBack: what users left dirty in the loop device's page cache
// could not all be written to the backend before the device was cleared
// (the backend failed, or its connection died); those bytes are lost.
// The teardown itself went on: a second Detach finds nothing to do.
var ErrWriteBack = errors.New("fuseloop: write-back before detaching failed")

// releaseWait bounds how long Detach waits for the kernel to clear the
// loop device after the last opener closed it. Clearing is quick; the
// bound only matters when someone else holds the device.
const releaseWait = 5 * time.Second

// Detached reports whether Detach has taken everything down (it may
// still have returned ErrWriteBack).
func (a *Attachment) Detached() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.loop == nil && a.srv == nil && a.writeBack == nil
}

// Detach clears the loop device, flushes the backend and unmounts the
// FUSE file system, leaving neither behind. It may be called after any
// error, and again after it failed (ErrBusy); after success it does
// nothing.
func (a *Attachment) Detach() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	// What users wrote through the device's page cache and closed
	// without a sync is still dirty there: our descriptor kept their
	// close from being the last, which is when the kernel writes back.
	// The binding has autoclear, so our close (the last) writes it back
	// while the device is bound and clears it only then; but a failure
	// there would be reported to no one. So it is written back first,
	// through the backend, on a descriptor of our own. A write-back that
	// fails has lost its pages already (the kernel marks them clean): the
	// error is returned (ErrWriteBack) by the Detach that completes, and
	// the teardown goes on.
	if a.loop != nil {
		var werr error
		// A descriptor of its own samples the device's error sequence
		// now: it reports write-back errors no one has seen, not ones a
		// user's fsync already got.
		if f, err := os.Open(a.dev); err != nil {
			werr = fmt.Errorf("%w: %s: %w", ErrWriteBack, a.dev, err)
		} else {
			if err := unix.Fsync(int(f.Fd())); err != nil {
				werr = fmt.Errorf("%w: %s: %w", ErrWriteBack, a.dev, err)
			}
			f.Close()
		}
		a.writeBack = werr
		// No LOOP_CLR_FD: the binding has autoclear (loopdev.Bind), so
		// the last close writes back what is still dirty while the
		// device is bound and only then clears it.
		a.loop.Close()
		a.loop = nil
	}
	if a.dev != "" {
		deadline := time.Now().Add(releaseWait)
		for delay := time.Millisecond; loopBoundTo(a.dev, a.path); delay = min(2*delay, 50*time.Millisecond) {
			if time.Now().After(deadline) {
				return errors.Join(a.writeBack, fmt.Errorf("%w: %s", ErrBusy, a.dev))
			}
			time.Sleep(delay)
		}
	}
	werr := a.writeBack
	a.writeBack = nil
	if a.srv == nil {
		return werr
	}
	// The loop device wrote through to the backend, but the kernel sent
	// no flush when it let go: make what it wrote durable now, while
	// the file system still serves the backend.
	ferr := a.b.Flush()
	if err := a.srv.Unmount(); err != nil {
		// Something still holds the mount (a shell in the directory,
		// a dead connection): take it out of the namespace anyway; the
		// kernel ends the connection when the last reference goes.
		if derr := unix.Unmount(a.dir, unix.MNT_DETACH); derr != nil {
			a.writeBack = werr // for the retry
			return errors.Join(werr, ferr, fmt.Errorf("unmount %s: %w (lazy: %v)", a.dir, err, derr))
		}
	}
	a.srv = nil
	if ferr != nil {
		return errors.Join(werr, fmt.Errorf("fuseloop: flush on detach: %w", ferr))
	}
	return werr
}
