// Package qcow2nbd adapts the engine's disks (pkg/qcow2) to the NBD
// server's Backend (pkg/nbdattach), so that neither package needs to know
// the other. It is used by `csi-qcow2 img serve` and the node plugin.
package qcow2nbd

import (
	"errors"
	"fmt"

	"github.com/csi-qcow2/csi-qcow2/pkg/nbdattach"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// Engine is what the adapter needs of an engine image: an *qcow2.Image,
// or a *qcow2.Live (a volume whose top can be frozen into a snapshot while
// it is served).
type Engine interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	WriteZeroes(off, n int64, unmap bool) error
	Discard(off, n int64) error
	Flush() error
	Map(off, n int64) ([]qcow2.Extent, error)
	Size() int64
	Resize(size int64) error
	ClusterSize() int64
	Header() qcow2.Header
	ReadOnly() bool
}

var (
	_ Engine = (*qcow2.Image)(nil)
	_ Engine = (*qcow2.Live)(nil)
)

// Image serves a qcow2 image (with its backing chain) as an NBD export.
type Image struct {
	img      Engine
	readOnly bool
	fastZero bool
}

var (
	_ nbdattach.Backend = (*Image)(nil)
	_ nbdattach.Resizer = (*Image)(nil)
)

// New adapts img. readOnly refuses writes even if img was opened writable.
func New(img Engine, readOnly bool) *Image {
	// Whole-cluster zeroing is a metadata update only on v3 images (the
	// zero flag); v2 images with a backing file must write zero bytes.
	return &Image{img: img, readOnly: readOnly || img.ReadOnly(), fastZero: img.Header().Version >= 3}
}

func (b *Image) Size() int64 { return b.img.Size() }

// Resize grows the image while it is served (nbdattach.Resizer): the
// engine writes the new size durably before it returns, and the new range
// reads as zeros. Shrinking is refused here, before the engine: the NBD
// server never asks for it.
func (b *Image) Resize(size int64) error {
	if b.readOnly {
		return nbdattach.ErrReadOnly
	}
	if cur := b.img.Size(); size < cur {
		return fmt.Errorf("%w: %d bytes, asked for %d", nbdattach.ErrShrink, cur, size)
	}
	return mapErr(b.img.Resize(size))
}

// Caps: the engine's Flush syncs the one image file every connection
// writes through, so several connections are safe (CAN_MULTI_CONN).
func (b *Image) Caps() nbdattach.Caps {
	return nbdattach.Caps{ReadOnly: b.readOnly, MultiConn: true, FUA: true, Trim: true,
		WriteZeroes: true, FastZero: b.fastZero, BlockStatus: true}
}

func (b *Image) ReadAt(p []byte, off int64) (int, error) {
	n, err := b.img.ReadAt(p, off)
	return n, mapErr(err)
}

// noWaitEngine is the engine's ReadAtNoWait (qcow2.Image and qcow2.Live
// have it).
type noWaitEngine interface {
	ReadAtNoWait(p []byte, off int64) (int, error)
}

var (
	_ noWaitEngine           = (*qcow2.Image)(nil)
	_ noWaitEngine           = (*qcow2.Live)(nil)
	_ nbdattach.NoWaitReader = (*Image)(nil)
)

// ReadAtNoWait serves a read from memory if the engine can
// (nbdattach.NoWaitReader): the cluster's mapping cached, its data in the
// page cache, no writer holding the image lock; otherwise the server
// reads again with ReadAt.
func (b *Image) ReadAtNoWait(p []byte, off int64) (int, error) {
	e, ok := b.img.(noWaitEngine)
	if !ok {
		return 0, nbdattach.ErrNoWaitUnsupported
	}
	n, err := e.ReadAtNoWait(p, off)
	switch {
	case err == nil:
		return n, nil
	case errors.Is(err, qcow2.ErrNoWaitUnsupported):
		return 0, errors.Join(nbdattach.ErrNoWaitUnsupported, err)
	}
	return 0, errors.Join(nbdattach.ErrWouldBlock, err)
}

func (b *Image) WriteAt(p []byte, off int64) (int, error) {
	if b.readOnly {
		return 0, nbdattach.ErrReadOnly
	}
	n, err := b.img.WriteAt(p, off)
	return n, mapErr(err)
}

func (b *Image) Flush() error {
	if b.readOnly {
		return nil
	}
	return mapErr(b.img.Flush())
}

func (b *Image) Trim(off, n int64) error {
	if b.readOnly {
		return nbdattach.ErrReadOnly
	}
	return mapErr(b.img.Discard(off, n))
}

// WriteZeroes deallocates whole clusters unless ZeroNoHole asks to keep
// them. ZeroFast is refused for ranges that are not whole clusters, whose
// edges need zero bytes written.
func (b *Image) WriteZeroes(off, n int64, flags nbdattach.ZeroFlags) error {
	if b.readOnly {
		return nbdattach.ErrReadOnly
	}
	if flags&nbdattach.ZeroFast != 0 {
		cs := b.img.ClusterSize()
		if !b.fastZero || off%cs != 0 || (n%cs != 0 && off+n != b.img.Size()) {
			return nbdattach.ErrNotFast
		}
	}
	return mapErr(b.img.WriteZeroes(off, n, flags&nbdattach.ZeroNoHole == 0))
}

// BlockStatus reports the allocation over the whole backing chain, as
// qemu-nbd does: data anywhere in the chain is allocated; zero clusters
// and unallocated ranges are holes that read as zeros.
func (b *Image) BlockStatus(off, n int64) ([]nbdattach.Extent, error) {
	exts, err := b.img.Map(off, n)
	if err != nil {
		return nil, mapErr(err)
	}
	return Extents(exts), nil
}

// Extents converts the engine's map to base:allocation extents.
func Extents(exts []qcow2.Extent) []nbdattach.Extent {
	out := make([]nbdattach.Extent, 0, len(exts))
	for _, e := range exts {
		out = append(out, nbdattach.Extent{Length: e.Length, Hole: !e.Data, Zero: e.Zero})
	}
	return out
}

// mapErr turns engine errors into the classes the NBD server reports.
func mapErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, qcow2.ErrReadOnly):
		return errors.Join(nbdattach.ErrReadOnly, err)
	case errors.Is(err, qcow2.ErrRange):
		return errors.Join(nbdattach.ErrInvalid, err)
	}
	return err
}
