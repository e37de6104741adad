package fuseloop

import (
	"errors"
	"fmt"
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
	// Once the device is cleared with only us holding it, the kernel's
	// write-back at our close meets an unbound device and the bytes are
	// lost; so write them back now, through the backend. A write-back
	// that fails has lost its pages already (the kernel marks them
	// clean): the error is returned, and the teardown goes on.
	var werr error
	if a.loop != nil {
		if err := unix.Fsync(int(a.loop.Fd())); err != nil {
			werr = fmt.Errorf("%w: %s: %w", ErrWriteBack, a.dev, err)
		}
		// With other openers the kernel only marks the device
		// autoclear; it clears on their last close, after writing
		// back what they left dirty.
		err := unix.IoctlSetInt(int(a.loop.Fd()), unix.LOOP_CLR_FD, 0)
		if err != nil && !errors.Is(err, unix.ENXIO) { // ENXIO: already cleared
			return errors.Join(werr, fmt.Errorf("LOOP_CLR_FD %s: %w", a.dev, err))
		}
		a.loop.Close()
		a.loop = nil
	}
	if a.dev != "" {
		deadline := time.Now().Add(releaseWait)
		for delay := time.Millisecond; loopBoundTo(a.dev, a.path); delay = min(2*delay, 50*time.Millisecond) {
			if time.Now().After(deadline) {
				return errors.Join(werr, fmt.Errorf("%w: %s", ErrBusy, a.dev))
			}
			time.Sleep(delay)
		}
	}
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
			return errors.Join(ferr, fmt.Errorf("unmount %s: %w (lazy: %v)", a.dir, err, derr))
		}
	}
	a.srv = nil
	if ferr != nil {
		return errors.Join(werr, fmt.Errorf("fuseloop: flush on detach: %w", ferr))
	}
	return werr
}
