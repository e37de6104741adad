package nbdattach

import (
	"errors"
	"syscall"
)

// errnoOf maps a backend error to the NBD error the client sees.
func errnoOf(err error) uint32 {
	switch {
	case errors.Is(err, ErrReadOnly):
		return errPerm
	case errors.Is(err, ErrNoSpace):
		return errNoSpc
	case errors.Is(err, ErrNotSupported), errors.Is(err, ErrNotFast):
		return errNotSup
	case errors.Is(err, ErrInvalid):
		return errInval
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		switch e {
		case syscall.EPERM, syscall.EROFS, syscall.EACCES:
			return errPerm
		case syscall.ENOSPC, syscall.EDQUOT:
			return errNoSpc
		case syscall.ENOMEM:
			return errNoMem
		case syscall.EINVAL:
			return errInval
		case syscall.EOPNOTSUPP:
			return errNotSup
		}
	}
	return errIO
}
