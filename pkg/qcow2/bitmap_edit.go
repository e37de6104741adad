package qcow2

import (
	"fmt"
	"math/bits"
	"slices"
)

// Bitmap management (what `qemu-img bitmap` does through QMP): add, remove,
// clear, enable, disable and merge persistent bitmaps of an image open for
// writing. Like QEMU, the changes live in memory, with the bitmaps marked
// in use on disk, until Close stores them; only a removal rewrites the
// directory at once.

// DefaultBitmapGranularity is QEMU's default for a new bitmap: the
// cluster size, clamped to 4 KiB..64 KiB.
func (img *Image) DefaultBitmapGranularity() int64 { return min(max(img.cs, 4096), 65536) }

// AddBitmap creates an empty persistent bitmap; granularity 0 means the
// default. A disabled bitmap does not record writes until enabled.
func (img *Image) AddBitmap(name string, granularity int64, disabled bool) error {
	img.lockQuiesced()
	defer img.mu.Unlock()
	if err := img.bitmapEditable(); err != nil {
		return err
	}
	if img.hdr.Version < 3 {
		return errorf(ErrUnsupported, "cannot store dirty bitmaps in qcow2 v2 files")
	}
	if granularity == 0 {
		granularity = img.DefaultBitmapGranularity()
	}
	if granularity < 1<<minBitmapGranBits || granularity&(granularity-1) != 0 || granularity > 1<<maxBitmapGranBits {
		return errorf(ErrInvalid, "granularity must be a power of two between %d and %d bytes", 1<<minBitmapGranBits, int64(1)<<maxBitmapGranBits)
	}
	if img.bm.entry(name) != nil || img.bm.memBitmap(name) != nil {
		return fmt.Errorf("%w: %q", ErrBitmapExists, name)
	}
	gb := uint8(bits.TrailingZeros64(uint64(granularity)))
	if err := checkBitmapConstraints(name, gb, uint64(img.size), img.cs); err != nil {
		return err
	}
	n, size := len(img.bm.entries), uint64(0)
	for i := range img.bm.entries {
		size += bitmapEntryLen(len(img.bm.entries[i].name), len(img.bm.entries[i].extra))
	}
	for _, b := range img.bm.mem {
		if img.bm.entry(b.name) == nil {
			n++
			size += bitmapEntryLen(len(b.name), 0)
		}
	}
	if n+1 > maxBitmaps || size+bitmapEntryLen(len(name), 0) > maxBitmapDirSize {
		return errorf(ErrRange, "no room for another bitmap (at most %d, directory at most %d bytes)", maxBitmaps, maxBitmapDirSize)
	}
	b := newLiveBitmap(name, gb, !disabled, img.size)
	b.fresh = true
	img.bm.mem = append(img.bm.mem, b)
	img.publishLive()
	return nil
}

// RemoveBitmap deletes a persistent bitmap (consistent or not) and frees
// its clusters.
func (img *Image) RemoveBitmap(name string) error {
	img.lockQuiesced()
	defer img.mu.Unlock()
	if err := img.bitmapEditable(); err != nil {
		return err
	}
	mi := slices.IndexFunc(img.bm.mem, func(b *liveBitmap) bool { return b.name == name })
	e := img.bm.entry(name)
	if mi < 0 && e == nil {
		return fmt.Errorf("%w: %q", ErrBitmapNotFound, name)
	}
	if mi >= 0 {
		img.bm.mem = slices.Delete(img.bm.mem, mi, mi+1)
		img.publishLive()
	}
	if e == nil {
		return nil
	}
	// An in-use bitmap's table may be damaged: then its clusters leak
	// rather than freeing what it names (QEMU does the same).
	freed, err := img.bitmapClusters(e)
	if err != nil {
		freed = nil
	}
	entries := slices.DeleteFunc(slices.Clone(img.bm.entries), func(x bitmapEntry) bool { return x.name == name })
	return img.switchBitmapDir(entries, freed)
}

// ClearBitmap resets every bit of a bitmap.
func (img *Image) ClearBitmap(name string) error {
	return img.editBitmap(name, func(b *liveBitmap) {
		clear(b.words)
		b.fresh = true
	})
}

// SetBitmapEnabled enables or disables a bitmap.
func (img *Image) SetBitmapEnabled(name string, enabled bool) error {
	return img.editBitmap(name, func(b *liveBitmap) { b.enabled = enabled })
}

// MergeBitmap sets in dst every range src records (granularities may
// differ, as in QEMU's block-dirty-bitmap-merge).
func (img *Image) MergeBitmap(dst, src string) error {
	img.lockQuiesced()
	s, err := img.bitmapSource(src)
	img.mu.Unlock()
	if err != nil {
		return err
	}
	return img.editBitmap(dst, func(b *liveBitmap) {
		for _, r := range s.ranges(img.size) {
			b.mark(r[0], r[1])
		}
	})
}

// bitmapSource returns a consistent bitmap's content without taking it
// over.
func (img *Image) bitmapSource(name string) (*liveBitmap, error) {
	if b := img.bm.memBitmap(name); b != nil {
		return b, nil
	}
	e := img.bm.entry(name)
	if e == nil {
		return nil, fmt.Errorf("%w: %q", ErrBitmapNotFound, name)
	}
	if e.inUse() {
		return nil, errorf(ErrInvalid, "bitmap %q is inconsistent and cannot be used", name)
	}
	return img.readBitmapData(e, false)
}

// editBitmap applies change to a bitmap held in memory, loading it (and
// marking it in use on disk) first if needed.
func (img *Image) editBitmap(name string, change func(*liveBitmap)) error {
	img.lockQuiesced()
	defer img.mu.Unlock()
	if err := img.bitmapEditable(); err != nil {
		return err
	}
	b := img.bm.memBitmap(name)
	if b == nil {
		e := img.bm.entry(name)
		if e == nil {
			return fmt.Errorf("%w: %q", ErrBitmapNotFound, name)
		}
		if e.inUse() {
			return errorf(ErrInvalid, "bitmap %q is inconsistent and cannot be used", name)
		}
		var err error
		if b, err = img.readBitmapData(e, true); err != nil {
			return err
		}
		if err := img.setInUse([]*liveBitmap{b}); err != nil {
			return err
		}
		img.bm.mem = append(img.bm.mem, b)
	}
	change(b)
	img.publishLive()
	return nil
}

func (img *Image) bitmapEditable() error {
	if img.closed {
		return ErrClosed
	}
	if err := img.writableBase(); err != nil {
		return err
	}
	// An edit retries a mark an undone Freeze left pending, as a write
	// does (the caller holds mu exclusively).
	if err := img.markInUseLocked(); err != nil {
		return err
	}
	if err := img.writable(); err != nil {
		return err
	}
	return img.bm.err
}
