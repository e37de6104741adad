package nbdattach

import (
	"errors"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// SetIOFlusher marks every thread of this process PR_SET_IO_FLUSHER: the
// process serves a block device, so memory reclaim must not make it wait
// for I/O on that device (which only it can complete) and writeback
// throttling must not stall it behind its own device.
//
// The flag is per thread and new threads inherit it only from their
// creator, so it is set on all threads at once (syscall.AllThreadsSyscall,
// which needs a binary built without cgo — as csi-qcow2 is). With cgo only
// the calling thread is marked and an error says so.
func SetIOFlusher() error {
	_, _, errno := syscall.AllThreadsSyscall6(unix.SYS_PRCTL, unix.PR_SET_IO_FLUSHER, 1, 0, 0, 0, 0)
	if errno == 0 {
		return nil
	}
	if errors.Is(errno, syscall.ENOTSUP) {
		if err := unix.Prctl(unix.PR_SET_IO_FLUSHER, 1, 0, 0, 0); err != nil {
			return fmt.Errorf("nbdattach: prctl(PR_SET_IO_FLUSHER): %w", err)
		}
		return errors.New("nbdattach: PR_SET_IO_FLUSHER set on one thread only (binary built with cgo)")
	}
	return fmt.Errorf("nbdattach: prctl(PR_SET_IO_FLUSHER): %w", errno)
}
