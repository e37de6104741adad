package qcow2

import (
	"errors"

	"golang.org/x/sys/unix"
)

var (
	// ErrWouldBlock is ReadAtNoWait's answer for a read that would have
	// to wait (for the disk, the image lock, an L2 table not cached) or
	// that is not the common request; ReadAt serves it.
	ErrWouldBlock = errors.New("qcow2: read would wait")
	// ErrNoWaitUnsupported: the kernel or file system cannot read
	// without waiting (preadv2 RWF_NOWAIT); ReadAtNoWait never will.
	ErrNoWaitUnsupported = errors.New("qcow2: non-blocking reads not supported")
)

// ReadAtNoWait reads like ReadAt, but only what it can without waiting:
// the common request (inside one cluster whose L2 entry is cached), its
// data in the host's page cache (preadv2 with RWF_NOWAIT), and the image
// lock free of writers (TryRLock). A cluster this image does not allocate
// is read the same way from its backing image or raw backing file, or
// reads as zeros without one. Anything else returns ErrWouldBlock (or a
// short count) and the caller reads again with ReadAt; what p holds then
// is undefined. It changes nothing: no cache fill, no mirror learned
// beyond what ReadAt's lookup learns.
//
// The NBD server calls it from the goroutine that reads requests, to
// serve reads from memory without starting a goroutine for each.
func (img *Image) ReadAtNoWait(p []byte, off int64) (int, error) {
	if !img.mu.TryRLock() {
		return 0, ErrWouldBlock
	}
	n, err := img.readNoWait(p, off)
	img.mu.RUnlock()
	return n, err
}

func (img *Image) readNoWait(p []byte, off int64) (int, error) {
	n := int64(len(p))
	if host, ok := img.dataHost(off, n); ok {
		if img.fd < 0 {
			return 0, ErrWouldBlock
		}
		return preadNoWait(img.fd, p, host)
	}
	if !img.unallocatedCached(off, n) {
		return 0, ErrWouldBlock
	}
	switch b := img.backing.(type) {
	case nil:
		clear(p)
		return len(p), nil
	case *Image:
		// Its own checks refuse a range past its end.
		return b.ReadAtNoWait(p, off)
	case *Raw:
		if off+n > b.size {
			return 0, ErrWouldBlock
		}
		return preadNoWait(int(b.f.f.Fd()), p, off)
	}
	return 0, ErrWouldBlock
}

// unallocatedCached reports whether [off, off+n) lies inside one cluster
// that this image leaves to its backing file, as far as memory tells:
// no L2 table, or a cached L2 entry of zero. Like dataWord, it answers
// false for anything else.
func (img *Image) unallocatedCached(off, n int64) bool {
	vi, ok := img.oneCluster(off, n)
	if !ok {
		return false
	}
	e, ok := img.cachedL2Entry(vi)
	return ok && e == 0
}

// preadNoWait reads p at off from fd with RWF_NOWAIT.
func preadNoWait(fd int, p []byte, off int64) (int, error) {
	n, err := unix.Preadv2(fd, [][]byte{p}, off, unix.RWF_NOWAIT)
	switch {
	case err == nil:
		return n, nil
	case errors.Is(err, unix.EAGAIN):
		return 0, ErrWouldBlock
	case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOSYS):
		return 0, ErrNoWaitUnsupported
	}
	return 0, err
}

// ReadAtNoWait is Image.ReadAtNoWait on the current top; while a Freeze
// switches the top it would block.
func (l *Live) ReadAtNoWait(p []byte, off int64) (int, error) {
	if !l.mu.TryRLock() {
		return 0, ErrWouldBlock
	}
	defer l.mu.RUnlock()
	if l.closed {
		return 0, ErrWouldBlock
	}
	return l.img.ReadAtNoWait(p, off)
}
