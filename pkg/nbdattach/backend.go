package nbdattach

import "errors"

// Backend is what an export serves. Offsets and lengths the server passes
// are always inside [0, Size()); requests outside are refused before they
// reach the backend. Methods are called from many goroutines at once.
type Backend interface {
	// ReadAt fills p from off, as io.ReaderAt.
	ReadAt(p []byte, off int64) (int, error)
	// WriteAt stores p at off. It returns only when the data has been
	// handed to the host kernel (a later Flush makes it durable).
	WriteAt(p []byte, off int64) (int, error)
	// Flush makes every write that returned before Flush was called
	// durable.
	Flush() error
	// Trim tells the backend that [off, off+n) is no longer needed; it may
	// deallocate it. Afterwards the range reads as zeros or as before.
	Trim(off, n int64) error
	// WriteZeroes makes [off, off+n) read as zeros. ZeroNoHole forbids
	// deallocating; ZeroFast asks it to fail with ErrNotFast instead of
	// doing slow work (writing zero bytes).
	WriteZeroes(off, n int64, flags ZeroFlags) error
	// BlockStatus describes [off, off+n) as consecutive extents starting
	// at off. It may describe less than n bytes but at least one.
	BlockStatus(off, n int64) ([]Extent, error)
	// Size is the export size in bytes. AddExport reads it; it changes
	// only through Server.ResizeExport (a backend that is a Resizer).
	Size() int64
	// Caps says which operations the backend supports and how; AddExport
	// reads it once.
	Caps() Caps
}

// NoWaitReader is an optional Backend method. ReadAtNoWait reads like
// ReadAt, but only if it needs not wait for a device or a lock held for
// long: data in the host's page cache (preadv2 RWF_NOWAIT), mappings in
// memory. Otherwise it returns an error (ErrWouldBlock; its other errors
// are not reported to the client either) or a short count, and the server
// reads the range again with ReadAt in a goroutine of its own. The
// request reader calls it for small READs at queue depths above 1, so
// that a read served from memory costs no goroutine wake-up; an error
// wrapping ErrNoWaitUnsupported stops those calls on the connection.
type NoWaitReader interface {
	ReadAtNoWait(p []byte, off int64) (int, error)
}

var (
	// ErrWouldBlock: ReadAtNoWait would have had to wait.
	ErrWouldBlock = errors.New("nbd: read would block")
	// ErrNoWaitUnsupported: ReadAtNoWait cannot work here (the kernel
	// has no RWF_NOWAIT, say).
	ErrNoWaitUnsupported = errors.New("nbd: non-blocking reads not supported")
)

// Caps are a backend's capabilities; the server advertises only these.
type Caps struct {
	// ReadOnly refuses writes, trims and zeroing with EPERM.
	ReadOnly bool
	// MultiConn: Flush covers writes made through every connection to the
	// same backend, so clients may spread requests over several
	// connections (NBD_FLAG_CAN_MULTI_CONN).
	MultiConn bool
	// FUA: the server honours the FUA flag by calling Flush after the
	// write; without it FUA is not advertised.
	FUA bool
	// Trim, WriteZeroes, FastZero and BlockStatus enable the commands.
	Trim        bool
	WriteZeroes bool
	FastZero    bool
	BlockStatus bool
	// Rotational hints that the storage seeks slowly.
	Rotational bool
}

// ZeroFlags modify WriteZeroes.
type ZeroFlags uint8

const (
	// ZeroNoHole: the range must stay allocated (NBD_CMD_FLAG_NO_HOLE).
	ZeroNoHole ZeroFlags = 1 << iota
	// ZeroFast: fail with ErrNotFast unless zeroing is cheap
	// (NBD_CMD_FLAG_FAST_ZERO).
	ZeroFast
)

// Extent is one run of a BlockStatus answer.
type Extent struct {
	Length int64
	// Hole: the range holds no storage of its own (NBD_STATE_HOLE).
	Hole bool
	// Zero: the range reads as zeros (NBD_STATE_ZERO).
	Zero bool
}

// Errors a backend may return (wrapped) to choose the NBD error the client
// sees; any other error is reported as EIO. Errno values from the syscall
// package are mapped too (ENOSPC, EDQUOT, EROFS, EPERM, ...).
var (
	ErrReadOnly     = errors.New("nbd: export is read-only")
	ErrNoSpace      = errors.New("nbd: no space left")
	ErrNotSupported = errors.New("nbd: operation not supported")
	ErrNotFast      = errors.New("nbd: zeroing would not be fast")
	ErrInvalid      = errors.New("nbd: invalid request")
)
