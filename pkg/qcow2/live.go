package qcow2

import (
	"os"
	"sync"
	"syscall"
)

// Live is a long-lived handle on a writable image whose top layer can be
// switched underneath it: Freeze turns the current top into a read-only
// layer and continues on a new overlay, while the handle (and whoever
// serves it, an NBD export say) stays the same object.
//
// Every I/O method holds mu shared, so requests run in parallel as they do
// on an Image; Freeze and Close hold it exclusively. A Freeze therefore
// waits for the requests in flight to return and holds back new ones until
// the new top is in place: no write is lost, and none lands on the wrong
// side of the switch or out of order.
//
// The operations that change the chain, Freeze and Collapse, also hold
// ops, so one runs at a time: a Freeze asked for during a Collapse waits
// for it (cancel the Collapse's context to have it sooner).
type Live struct {
	ops    sync.Mutex
	mu     sync.RWMutex
	img    *Image
	closed bool
	// stepHook, if set (tests only), runs after each durable step of a
	// Freeze; an error makes the Freeze fail there and roll back.
	stepHook func(step string) error
	// collapseHook, if set (tests only), runs after a Collapse has chosen
	// what a window [off, off+n) of the top needs, before it copies any
	// of it, with no lock held.
	collapseHook func(top *Image, off, n int64)
	// collapseBatch, if set (tests only), replaces the data a Collapse
	// copies per step (collapseBatch), for more steps on a small disk.
	collapseBatch int64
}

var _ Disk = (*Live)(nil)

// OpenLive opens the qcow2 image at path writable, backing chain included,
// as a Live handle. It refuses a file with a second name: that is what a
// Freeze interrupted by a crash leaves (call RecoverFreeze first), and
// writing it would change the snapshot too.
func OpenLive(path string, opts Options) (*Live, error) {
	if opts.ReadOnly || opts.NoBacking {
		return nil, errorf(ErrInvalid, "a live handle needs a writable image with its backing chain")
	}
	if st, err := os.Stat(path); err != nil {
		return nil, err
	} else if sys, ok := st.Sys().(*syscall.Stat_t); ok && sys.Nlink > 1 {
		return nil, errorf(ErrInvalid, "%s has %d names (an interrupted Freeze? RecoverFreeze settles it)", path, sys.Nlink)
	}
	img, err := Open(absPath(path), opts)
	if err != nil {
		return nil, err
	}
	return &Live{img: img}, nil
}

// with runs fn on the current top under the shared lock.
func (l *Live) with(fn func(img *Image) error) error {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return ErrClosed
	}
	return fn(l.img)
}

// WithImage runs fn on the current top image while no Freeze can switch
// it (for internal snapshots, checks, queries). I/O through the handle goes
// on meanwhile; fn must not keep the *Image after it returns, nor call
// Freeze or Close (they wait for fn).
func (l *Live) WithImage(fn func(img *Image) error) error { return l.with(fn) }

// ReadAt reads guest data through the whole chain.
func (l *Live) ReadAt(p []byte, off int64) (n int, err error) {
	err = l.with(func(img *Image) error { n, err = img.ReadAt(p, off); return err })
	return n, err
}

// WriteAt writes guest data to the current top (see Image.WriteAt).
func (l *Live) WriteAt(p []byte, off int64) (n int, err error) {
	err = l.with(func(img *Image) error { n, err = img.WriteAt(p, off); return err })
	return n, err
}

// WriteZeroes makes a range read as zeros (see Image.WriteZeroes).
func (l *Live) WriteZeroes(off, n int64, unmap bool) error {
	return l.with(func(img *Image) error { return img.WriteZeroes(off, n, unmap) })
}

// Discard deallocates a range (see Image.Discard).
func (l *Live) Discard(off, n int64) error {
	return l.with(func(img *Image) error { return img.Discard(off, n) })
}

// Flush makes every completed write durable. Writes that completed before
// a Freeze are durable in the frozen layer already.
func (l *Live) Flush() error { return l.with((*Image).Flush) }

// Resize changes the virtual size of the current top (see Image.Resize)
// while I/O goes on; a later Freeze keeps the new size for the new top.
func (l *Live) Resize(size int64) error {
	return l.with(func(img *Image) error { return img.Resize(size) })
}

// Map describes the guest range through the chain (see Image.Map).
func (l *Live) Map(off, n int64) (ext []Extent, err error) {
	err = l.with(func(img *Image) error { ext, err = img.Map(off, n); return err })
	return ext, err
}

// Size returns the virtual size (0 once closed).
func (l *Live) Size() (size int64) {
	_ = l.with(func(img *Image) error { size = img.Size(); return nil })
	return size
}

// ClusterSize returns the cluster size of the top (a Freeze keeps it).
func (l *Live) ClusterSize() (cs int64) {
	_ = l.with(func(img *Image) error { cs = img.ClusterSize(); return nil })
	return cs
}

// Header returns a copy of the current top's header (a Freeze keeps the
// version, cluster size and refcount width).
func (l *Live) Header() (h Header) {
	_ = l.with(func(img *Image) error { h = img.Header(); return nil })
	return h
}

// ReadOnly reports whether writes are refused (corruption was detected in
// the top, or the handle is closed).
func (l *Live) ReadOnly() (ro bool) {
	ro = true
	_ = l.with(func(img *Image) error { ro = img.ReadOnly(); return nil })
	return ro
}

// Info describes the current top (the zero Info once closed).
func (l *Live) Info() (in Info) {
	_ = l.with(func(img *Image) error { in = img.Info(); return nil })
	return in
}

// Close closes the current top and its chain.
func (l *Live) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ErrClosed
	}
	l.closed = true
	return l.img.Close()
}
