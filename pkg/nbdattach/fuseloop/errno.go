package fuseloop

import (
	"errors"
	"syscall"

	"github.com/csi-qcow2/csi-qcow2/pkg/nbdattach"
)

// errnoOf maps a backend error to what the writer of the file (and so the
// loop device's user) sees. Only "full" and "read-only" are worth telling
// apart for a block device; everything else is an I/O error, never
// success.
func errnoOf(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	switch {
	case errors.Is(err, nbdattach.ErrNoSpace):
		return syscall.ENOSPC
	case errors.Is(err, nbdattach.ErrReadOnly):
		return syscall.EROFS
	case errors.Is(err, nbdattach.ErrNotSupported):
		return syscall.EOPNOTSUPP
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		switch e {
		case syscall.ENOSPC, syscall.EDQUOT:
			return syscall.ENOSPC
		case syscall.EROFS, syscall.EPERM, syscall.EACCES:
			return syscall.EROFS
		}
	}
	return syscall.EIO
}
