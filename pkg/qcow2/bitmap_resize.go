package qcow2

// Size changes (Resize, ApplySnapshot) with persistent bitmaps. QEMU
// resizes the bitmaps it holds in memory and refuses when a bitmap is not
// loaded or inconsistent (qcow2_truncate_bitmaps_check); the engine holds
// only enabled bitmaps in memory, so a disabled or in-use bitmap blocks a
// size change: its stored table would no longer cover the disk.

// checkBitmapsResize refuses a change to newSize that the bitmaps cannot
// follow. The caller holds mu exclusively.
func (img *Image) checkBitmapsResize(newSize int64) error {
	if newSize == img.size {
		return nil
	}
	for i := range img.bm.entries {
		e := &img.bm.entries[i]
		if img.bm.memBitmap(e.name) == nil {
			return errorf(ErrUnsupported, "cannot change the size of an image with the disabled or inconsistent bitmap %q (remove it first)", e.name)
		}
	}
	for _, b := range img.bm.mem {
		if err := checkBitmapConstraints(b.name, b.granBits, uint64(newSize), img.cs); err != nil {
			return err
		}
	}
	return nil
}

// resizeBitmaps follows a size change: the in-memory bitmaps take the new
// size, and a grown range counts as changed (it was not part of what the
// bitmap's last backup saw).
func (img *Image) resizeBitmaps(newSize int64) {
	for _, b := range img.bm.mem {
		if b.nbits == (newSize+int64(1)<<b.granBits-1)>>b.granBits {
			continue
		}
		old := b.nbits << b.granBits
		b.resize(newSize)
		b.fresh = true
		if b.enabled && newSize > old {
			b.mark(old, newSize-old)
		}
	}
}

// bitmapsReverted follows ApplySnapshot: the whole disk may differ from
// what it was, so every enabled bitmap is marked entirely.
func (img *Image) bitmapsReverted() {
	img.resizeBitmaps(img.size)
	img.markBitmaps(0, img.size)
}
