package qcow2

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
)

// ErrSyncFailed: an fdatasync of the image failed earlier, so writes made
// since the last successful Flush may be lost, and the image takes no more
// writes. Only closing and reopening the image clears it.
var ErrSyncFailed = errors.New("an fdatasync of the image failed")

// syncGuard is the File of a writable image. After a failed fdatasync
// Linux marks the pages it could not write back clean and reports the
// error once: a later fdatasync succeeds although those writes never
// reached the disk. So the first failed sync is remembered and every later
// Sync, write, truncate or punch fails with it (QEMU's file-posix treats a
// failed flush the same way). A failed plain write is not sticky: nothing
// of it was acknowledged, and a full filesystem must work again once space
// is freed.
type syncGuard struct {
	File
	// syncMu makes the look at failed, the sync and the recording of its
	// failure one step: Linux reports a writeback error to one fdatasync
	// (or RWF_DSYNC write) of a descriptor only, so a sync that overlaps a
	// failing one may return 0 although the pages both cover are lost.
	syncMu sync.Mutex
	failed atomic.Pointer[error]
	// onFail runs once, at the first failure (set before the image is
	// shared: attachJournal). It makes the write journal unusable: its
	// records map clusters whose data that sync may have lost.
	onFail func()
}

// guardSyncs wraps f, unless it is guarded already.
func guardSyncs(f File) File {
	if _, ok := f.(*syncGuard); ok {
		return f
	}
	return &syncGuard{File: f}
}

// syncFailure returns the sticky error of f, nil if f never failed a sync
// (or is not guarded: read-only images never sync).
func syncFailure(f File) error {
	if g, ok := f.(*syncGuard); ok {
		return g.err()
	}
	return nil
}

func (g *syncGuard) err() error {
	if p := g.failed.Load(); p != nil {
		return *p
	}
	return nil
}

// fail records cause as the sticky error, unless an earlier one is there,
// and returns the sticky error.
func (g *syncGuard) fail(cause error) error {
	err := fmt.Errorf("%w (%w): writes since the last successful flush may be lost, the image takes no more writes until it is reopened", ErrSyncFailed, cause)
	if g.failed.CompareAndSwap(nil, &err) && g.onFail != nil {
		g.onFail()
	}
	return g.err()
}

func (g *syncGuard) Sync() error {
	g.syncMu.Lock()
	defer g.syncMu.Unlock()
	if err := g.err(); err != nil {
		return err
	}
	if err := g.File.Sync(); err != nil {
		return g.fail(err)
	}
	return nil
}

// WriteAtDurable is a write plus a sync. The sync half of pwritev2
// (RWF_DSYNC) reports, and so consumes for this descriptor, any writeback
// error of the file, ENOSPC and EDQUOT included (a thin-provisioned or
// network filesystem that ran out of space): no later sync would report
// it. So a plain write goes first, whose failure (a full filesystem) is
// not sticky, as it syncs nothing; any failure of the durable write after
// it is.
func (g *syncGuard) WriteAtDurable(p []byte, off int64) error {
	g.syncMu.Lock()
	defer g.syncMu.Unlock()
	if err := g.err(); err != nil {
		return err
	}
	if _, err := g.File.WriteAt(p, off); err != nil {
		return err
	}
	if err := writeDurable(g.File, p, off); err != nil {
		return g.fail(err)
	}
	return nil
}

func (g *syncGuard) WriteAt(p []byte, off int64) (int, error) {
	if err := g.err(); err != nil {
		return 0, err
	}
	return g.File.WriteAt(p, off)
}

func (g *syncGuard) Truncate(size int64) error {
	if err := g.err(); err != nil {
		return err
	}
	return g.File.Truncate(size)
}

func (g *syncGuard) PunchHole(off, n int64) error {
	if err := g.err(); err != nil {
		return err
	}
	return g.File.PunchHole(off, n)
}

// ReadFD and WriteFD offer the guarded file's descriptors (pread.go).
// In-place guest writes then bypass WriteAt: Image.writable refuses them
// first once a sync failed.
func (g *syncGuard) ReadFD() (int, bool) {
	if r, ok := g.File.(fdReader); ok {
		return r.ReadFD()
	}
	return -1, false
}

func (g *syncGuard) WriteFD() (int, bool) {
	if w, ok := g.File.(fdWriter); ok {
		return w.WriteFD()
	}
	return -1, false
}

// hostFile returns the *osFile under f, if f is one or stands in front
// of one.
func hostFile(f File) (*osFile, bool) {
	for {
		switch w := f.(type) {
		case *osFile:
			return w, true
		case *syncGuard:
			f = w.File
		case unwrapper:
			f = w.Unwrap()
		default:
			return nil, false
		}
	}
}
