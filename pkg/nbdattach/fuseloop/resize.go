package fuseloop

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Resize makes the device follow the backend after it grew: the file's
// size is the backend's (attributes are never cached, so a stat reloads
// it into the kernel's inode), then LOOP_SET_CAPACITY makes the loop
// device read that size.
func (a *Attachment) Resize() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.loop == nil {
		return fmt.Errorf("fuseloop: %s is detached", a.dev)
	}
	want := a.b.Size()
	if err := checkSize(want, a.blockSize); err != nil {
		return err
	}
	fi, err := os.Stat(a.path)
	if err != nil {
		return err
	}
	if fi.Size() != want {
		return fmt.Errorf("fuseloop: %s has %d bytes after stat, backend %d", a.path, fi.Size(), want)
	}
	if err := unix.IoctlSetInt(int(a.loop.Fd()), unix.LOOP_SET_CAPACITY, 0); err != nil {
		return fmt.Errorf("LOOP_SET_CAPACITY %s: %w", a.dev, err)
	}
	return nil
}
