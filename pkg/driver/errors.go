package driver

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/csi-qcow2/csi-qcow2/pkg/driver/golden"
	"github.com/csi-qcow2/csi-qcow2/pkg/driver/store"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// grpcError maps an error of the store, the importer or the engine onto
// the code the CSI spec names for it; the message is the error's own,
// which says what was wrong.
func grpcError(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	code := codes.Internal
	switch {
	case errors.Is(err, store.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, store.ErrOtherNode):
		// The provisioner reschedules on ResourceExhausted; NotFound
		// would end provisioning for good (DESIGN.md).
		code = codes.ResourceExhausted
	case errors.Is(err, store.ErrExists):
		code = codes.AlreadyExists
	case errors.Is(err, store.ErrBusy), errors.Is(err, qcow2.ErrLocked):
		code = codes.Aborted
	case errors.Is(err, store.ErrInvalid), errors.Is(err, golden.ErrInvalid):
		code = codes.InvalidArgument
	case errors.Is(err, store.ErrInUse):
		code = codes.FailedPrecondition
	case errors.Is(err, store.ErrRange):
		code = codes.OutOfRange
	case errors.Is(err, store.ErrNotReady):
		code = codes.Unavailable
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	}
	return status.Error(code, err.Error())
}

func invalid(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, format, args...)
}
