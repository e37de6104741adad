package store

import (
	"errors"
	"fmt"
)

// Errors the CSI layer maps to gRPC codes (pkg/driver/errors.go).
var (
	// ErrNotFound: no such object on this node.
	ErrNotFound = errors.New("not found")
	// ErrOtherNode: the ID names an object another node owns.
	ErrOtherNode = errors.New("owned by another node")
	// ErrExists: the name is taken by an object made with other
	// parameters.
	ErrExists = errors.New("already exists with other parameters")
	// ErrBusy: another operation holds the object.
	ErrBusy = errors.New("an operation on this object is in progress")
	// ErrInvalid: the request itself is wrong.
	ErrInvalid = errors.New("invalid request")
	// ErrInUse: the object cannot go while something uses it.
	ErrInUse = errors.New("in use")
	// ErrRange: a size outside what the source or the store allows.
	ErrRange = errors.New("size out of range")
	// ErrNotReady: the store has not finished opening.
	ErrNotReady = errors.New("store not ready")
)

func errorf(kind error, format string, args ...any) error {
	return fmt.Errorf("%w: %s", kind, fmt.Sprintf(format, args...))
}
