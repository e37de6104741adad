package nbdattach

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Defaults for AttachOptions fields left zero.
const (
	DefaultBlockSize       = 512
	DefaultTimeout         = 30 * time.Second
	DefaultDeadConnTimeout = 120 * time.Second
)

// AttachOptions say how to attach a backend to a kernel nbd device.
type AttachOptions struct {
	// BackendID identifies the volume; the kernel shows it in
	// /sys/block/nbdX/backend, and a restarted server finds its device by
	// it. Required (the ioctl fallback cannot record it).
	BackendID string
	// Size of the export in bytes: a multiple of BlockSize.
	Size uint64
	// BlockSize is the device's logical block size: a power of two from
	// 512 to 4096. 0 means DefaultBlockSize.
	BlockSize uint64
	// Flags are the transmission flags the kernel is told (ExportFlags of
	// the backend served).
	Flags uint16
	// Connections is the number of sockets; more than one needs
	// NBD_FLAG_CAN_MULTI_CONN in Flags. 0 means 1.
	Connections int
	// Device is "/dev/nbdN" to use that device; "" lets the kernel choose.
	Device string
	// Timeout is the kernel's per-request timeout: a request unanswered
	// that long marks its connection dead and is retried on a live or
	// reconnected one. 0 means DefaultTimeout.
	Timeout time.Duration
	// DeadConnTimeout is how long the kernel holds I/O while every
	// connection is dead, waiting for RECONFIGURE (a restarted server),
	// before failing it. 0 means DefaultDeadConnTimeout.
	DeadConnTimeout time.Duration
	// UseIoctl forces the legacy ioctl interface (no backend identifier,
	// no reconfigure). It is used anyway when the netlink family is absent.
	UseIoctl bool
	// SysBlock is the sysfs block directory; "" means DefaultSysBlock.
	SysBlock string
	// Logf reports events a caller may want to see (fallbacks, relinks).
	// nil discards them.
	Logf func(format string, args ...any)
}

func (o AttachOptions) withDefaults() AttachOptions {
	if o.BlockSize == 0 {
		o.BlockSize = DefaultBlockSize
	}
	if o.Connections == 0 {
		o.Connections = 1
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.DeadConnTimeout == 0 {
		o.DeadConnTimeout = DefaultDeadConnTimeout
	}
	if o.SysBlock == "" {
		o.SysBlock = DefaultSysBlock
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	return o
}

// maxBackendIDLen keeps the identifier well inside a sysfs page and a
// netlink message.
const maxBackendIDLen = 256

func (o AttachOptions) validate() error {
	switch {
	case o.BackendID == "":
		return errors.New("nbdattach: a backend identifier is required")
	case len(o.BackendID) > maxBackendIDLen:
		return fmt.Errorf("nbdattach: backend identifier longer than %d bytes", maxBackendIDLen)
	case strings.ContainsAny(o.BackendID, "\x00\n"):
		return errors.New("nbdattach: backend identifier contains a NUL or newline")
	case o.BlockSize < 512 || o.BlockSize > 4096 || o.BlockSize&(o.BlockSize-1) != 0:
		return fmt.Errorf("nbdattach: block size %d is not a power of two from 512 to 4096", o.BlockSize)
	case o.Size == 0:
		return errors.New("nbdattach: export size is 0")
	case o.Size%o.BlockSize != 0:
		return fmt.Errorf("nbdattach: export size %d is not a multiple of the block size %d", o.Size, o.BlockSize)
	case o.Connections < 1 || o.Connections > 16:
		return fmt.Errorf("nbdattach: %d connections: use 1 to 16", o.Connections)
	case o.Flags&tflagHasFlags == 0:
		return errors.New("nbdattach: transmission flags lack NBD_FLAG_HAS_FLAGS")
	case o.Connections > 1 && o.Flags&tflagMultiConn == 0:
		return errors.New("nbdattach: several connections need a backend that is safe for multi-conn")
	case o.Timeout < 0 || o.DeadConnTimeout < 0:
		return errors.New("nbdattach: negative timeout")
	}
	if o.Device != "" {
		if _, ok := nbdIndex(strings.TrimPrefix(o.Device, "/dev/")); !ok {
			return fmt.Errorf("nbdattach: %q is not an nbd device (want /dev/nbdN)", o.Device)
		}
	}
	return nil
}

// deviceIndex is the index Options.Device names, or -1.
func (o AttachOptions) deviceIndex() int {
	if o.Device == "" {
		return -1
	}
	idx, _ := nbdIndex(strings.TrimPrefix(o.Device, "/dev/"))
	return idx
}

func (o AttachOptions) kernelConfig(index int) kernelConfig {
	return kernelConfig{
		index:           index,
		size:            o.Size,
		blockSize:       o.BlockSize,
		timeout:         o.Timeout,
		deadConnTimeout: o.DeadConnTimeout,
		serverFlags:     uint64(o.Flags),
		backendID:       o.BackendID,
	}
}
