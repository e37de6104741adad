package qcow2

import (
	"errors"
	"fmt"
)

// Error classes. Every error the engine returns for bad input wraps one of
// these so that callers (the CLI, the CSI driver) can map it to an exit code
// or a gRPC status without matching strings.
var (
	// ErrInvalid: the image is malformed.
	ErrInvalid = errors.New("invalid qcow2 image")
	// ErrUnsupported: the image uses a feature this engine does not implement.
	ErrUnsupported = errors.New("unsupported qcow2 feature")
	// ErrCorrupt: the image is marked corrupt, or a metadata write would
	// have overlapped existing metadata; the image is now read-only.
	ErrCorrupt = errors.New("qcow2 image is corrupt")
	// ErrReadOnly: a write to an image opened (or turned) read-only.
	ErrReadOnly = errors.New("qcow2 image is read-only")
	// ErrPolicy: a file named inside the image is not allowed by policy.
	ErrPolicy = errors.New("refused by backing file policy")
	// ErrRange: an offset or length outside the image.
	ErrRange = errors.New("out of range")
	// ErrClosed: the image has been closed.
	ErrClosed = errors.New("qcow2 image is closed")
	// ErrLocked: another user of the file (a process, QEMU included, or
	// another open in this one) holds a lock that conflicts with the open
	// (lock.go); nothing was changed.
	ErrLocked = errors.New("image is locked")
	// ErrLimit: opening the image with its backing chain would exceed a
	// resource bound the caller set or the engine's default (the memory
	// budget, Options.MemoryBudget).
	ErrLimit = errors.New("qcow2 resource limit exceeded")
)

func errorf(class error, format string, args ...any) error {
	return fmt.Errorf("%w: %s", class, fmt.Sprintf(format, args...))
}
