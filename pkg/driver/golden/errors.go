package golden

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"syscall"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// ErrInvalid is wrapped by every error that the import's input caused: a
// bad SHA-256, URL, scheme or path; a checksum mismatch; a server's
// refusal (4xx); content that is not a usable disk image (empty, not a
// multiple of 512 bytes, another format, a backing or external data file,
// bounds of the engine); too big; a decompression bomb. Retrying the same
// request cannot succeed. Other errors (network, disk, cancellation) are
// transient.
// errShutdown: the Importer was shut down.
var errShutdown = errors.New("golden: the importer is shut down")

var ErrInvalid = errors.New("invalid golden image")

// errTooBig is ErrInvalid for a source past MaxDownloadBytes: what
// follows is not worth fetching, not even for its checksum.
var errTooBig = fmt.Errorf("%w: too big", ErrInvalid)

// invalidf returns an error wrapping ErrInvalid.
func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// engineInput reports whether err is the engine refusing an image for
// what it holds (malformed, unsupported, refused by policy, past a
// bound), rather than failing to read the file.
func engineInput(err error) bool {
	for _, class := range []error{
		qcow2.ErrInvalid, qcow2.ErrUnsupported, qcow2.ErrCorrupt, qcow2.ErrPolicy,
		qcow2.ErrLimit, qcow2.ErrRange, qcow2.ErrJournalPending, io.ErrUnexpectedEOF,
	} {
		if errors.Is(err, class) {
			return true
		}
	}
	return false
}

// hostFailure reports whether err is the host's (the disk, memory,
// descriptors): such an error is transient whatever else it wraps.
func hostFailure(err error) bool {
	for _, errno := range []syscall.Errno{
		syscall.EIO, syscall.ENOSPC, syscall.EDQUOT, syscall.ENOMEM,
		syscall.EMFILE, syscall.ENFILE, syscall.EROFS, syscall.EINTR,
	} {
		if errors.Is(err, errno) {
			return true
		}
	}
	return false
}

// sourceErr classifies an error that opening or reading the image we
// fetched returned: the image's fault (ErrInvalid) unless the host failed.
// The name of the scratch file, which means nothing to the caller, is
// left out of the message.
func sourceErr(what, scratch string, err error) error {
	err = unnamed{err, scratch + ": "}
	if engineInput(err) && !hostFailure(err) {
		return fmt.Errorf("%w: %s: %w", ErrInvalid, what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// unnamed is an error whose message leaves out a file name prefix.
type unnamed struct {
	err    error
	prefix string
}

func (u unnamed) Error() string { return strings.ReplaceAll(u.err.Error(), u.prefix, "") }
func (u unnamed) Unwrap() error { return u.err }
