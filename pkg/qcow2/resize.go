package qcow2

import "fmt"

// Resize changes the virtual size. Growing exposes zeros (never backing
// data beyond the old size); shrinking is refused unless everything past
// the new size is unallocated in this image.
func (img *Image) Resize(newSize int64) error {
	if err := img.prepareWrite(); err != nil {
		return err
	}
	img.lockQuiesced()
	defer img.mu.Unlock()
	if img.closed {
		return ErrClosed
	}
	if err := img.writable(); err != nil {
		return err
	}
	if newSize < 0 || newSize%512 != 0 || newSize > maxImageSize {
		return fmt.Errorf("%w: new size %d must be a multiple of 512 between 0 and %d", ErrRange, newSize, maxImageSize)
	}
	if img.hdr.Version < 3 && img.hdr.NbSnapshots > 0 {
		// Version 2 snapshots do not record their disk size, so QEMU
		// could not revert one across a resize.
		return fmt.Errorf("%w: cannot resize a version 2 image with internal snapshots", ErrUnsupported)
	}
	if err := img.checkBitmapsResize(newSize); err != nil {
		return err
	}
	old := img.size
	switch {
	case newSize == old:
		return nil
	case newSize < old:
		return img.shrinkLocked(newSize)
	}
	if err := img.markDirty(); err != nil {
		return err
	}
	if err := img.growL1(ceilDiv(newSize, img.cs*img.l2Entries)); err != nil {
		return err
	}
	// Zero what would otherwise show through: backing data beyond the old
	// size, and stale bytes in the tail of the old last cluster.
	zeroEnd := min(newSize, ceilDiv(old, img.cs)*img.cs)
	if img.backing != nil {
		zeroEnd = max(zeroEnd, min(newSize, img.backing.Size()))
	}
	if zeroEnd > old {
		if err := img.zeroLocked(old, zeroEnd-old, true); err != nil {
			return err
		}
	}
	return img.setSize(newSize)
}

func (img *Image) shrinkLocked(newSize int64) error {
	for vi := ceilDiv(newSize, img.cs); vi < ceilDiv(img.size, img.cs); vi++ {
		if vi%img.l2Entries == 0 {
			// Skip whole unallocated L2 tables quickly.
			if l2, err := img.l2Offset(vi / img.l2Entries); err != nil {
				return err
			} else if l2 == 0 {
				vi += img.l2Entries - 1
				continue
			}
		}
		m, err := img.lookup(vi)
		if err != nil {
			return err
		}
		if m.kind != kindUnallocated && !(m.kind == kindZero && m.host == 0) {
			return fmt.Errorf("%w: cannot shrink to %d bytes: guest offset %d is allocated", ErrRange, newSize, vi*img.cs)
		}
	}
	return img.setSize(newSize)
}

// setSize writes the new virtual size to the header, durably.
func (img *Image) setSize(newSize int64) error {
	if err := img.f.Sync(); err != nil {
		return err
	}
	if err := img.checkMetaWrite(hdrOffSize, metaHeader); err != nil {
		return err
	}
	if err := img.writeU64(hdrOffSize, uint64(newSize)); err != nil {
		return err
	}
	if err := img.f.Sync(); err != nil {
		return err
	}
	img.size = newSize
	img.hdr.Size = uint64(newSize)
	img.resizeBitmaps(newSize)
	return nil
}

// growL1 makes the L1 table hold at least need entries. A table that fits
// in its clusters grows in place; otherwise a new table is written and made
// durable before the header points to it.
func (img *Image) growL1(need int64) error {
	cur := int64(len(img.l1))
	if need <= cur {
		return nil
	}
	if need*8 > maxL1Bytes {
		return fmt.Errorf("%w: the L1 table would need %d entries (at most %d)", ErrRange, need, maxL1Bytes/8)
	}
	l1off := int64(img.hdr.L1TableOffset)
	if cur > 0 && need*8 <= ceilDiv(cur*8, img.cs)*img.cs {
		if err := img.checkMetaWrite(l1off, metaL1); err != nil {
			return err
		}
		if _, err := img.f.WriteAt(make([]byte, (need-cur)*8), l1off+cur*8); err != nil {
			return err
		}
		if err := img.f.Sync(); err != nil {
			return err
		}
		var b [4]byte
		putU32(b[:], uint32(need))
		if _, err := img.f.WriteAt(b[:], hdrOffL1); err != nil {
			return err
		}
		img.l1 = append(img.l1, make([]uint64, need-cur)...)
		img.hdr.L1Size = uint32(need)
		return img.f.Sync()
	}
	ncl := ceilDiv(need*8, img.cs)
	start, err := img.allocRunLive(ncl)
	if err != nil {
		return err
	}
	newL1 := make([]uint64, need)
	copy(newL1, img.l1)
	buf := make([]byte, ncl*img.cs)
	putU64s(buf, newL1)
	if err := img.checkDataRange(start*img.cs, ncl*img.cs); err != nil {
		return err
	}
	if _, err := img.f.WriteAt(buf, start*img.cs); err != nil {
		return err
	}
	if err := img.f.Sync(); err != nil {
		return err
	}
	var hb [12]byte
	putU32(hb[:4], uint32(need))
	putU64s(hb[4:], []uint64{uint64(start * img.cs)})
	if _, err := img.f.WriteAt(hb[:], hdrOffL1); err != nil {
		return err
	}
	if err := img.f.Sync(); err != nil {
		return err
	}
	if cur > 0 {
		for c := l1off / img.cs; c < ceilDiv(l1off+cur*8, img.cs); c++ {
			img.alloc.freeLater(c)
		}
	}
	img.meta.addRange(start*img.cs, ncl*img.cs, img.cs, metaL1)
	img.l1 = newL1
	img.hdr.L1Size = uint32(need)
	img.hdr.L1TableOffset = uint64(start * img.cs)
	return nil
}
