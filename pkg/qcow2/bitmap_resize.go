package qcow2

// Size changes (Resize, ApplySnapshot) with persistent bitmaps, as QEMU's
// qcow2_truncate_bitmaps_check and truncate allow them: every bitmap must
// be usable, so an inconsistent (in-use) bitmap blocks a size change, and
// the others are held in memory so that Close stores them at the new size.

// checkBitmapsResize prepares the bitmaps for a change to newSize or
// refuses it, changing nothing. The caller holds mu exclusively.
func (img *Image) checkBitmapsResize(newSize int64) error {
	if newSize == img.size || len(img.bm.entries) == 0 {
		return nil
	}
	var load []*bitmapEntry
	for i := range img.bm.entries {
		e := &img.bm.entries[i]
		if img.bm.memBitmap(e.name) != nil {
			continue
		}
		if e.inUse() {
			return errorf(ErrUnsupported, "cannot change the size of an image with the inconsistent bitmap %q (remove it first)", e.name)
		}
		load = append(load, e)
	}
	for i := range img.bm.entries {
		e := &img.bm.entries[i]
		if err := checkBitmapConstraints(e.name, e.granBits, uint64(newSize), img.cs); err != nil {
			return err
		}
	}
	// Disabled bitmaps are kept on disk while the size stays; now they
	// must be rewritten at the new size: load them and mark them in use,
	// as enabled ones are at open.
	var loaded []*liveBitmap
	for _, e := range load {
		b, err := img.readBitmapData(e, true)
		if err != nil {
			return err
		}
		loaded = append(loaded, b)
	}
	if err := img.setInUse(loaded); err != nil {
		return err
	}
	img.bm.mem = append(img.bm.mem, loaded...)
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
