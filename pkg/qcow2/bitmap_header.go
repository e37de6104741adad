package qcow2

import "encoding/binary"

// The bitmaps header extension on disk. Writes to cluster 0 are assumed
// atomic per 512-byte sector only, so every change is made in steps whose
// crash states all parse as a valid header:
//
//   - Updating the extension (a new directory): its 24 bytes are rewritten
//     in place. If they straddle a sector, the autoclear bit is cleared
//     around the write (QEMU's protocol), so a torn write is ignored.
//   - Adding it: the extension goes where the end marker is, after the
//     others, with the autoclear bit clear (readers ignore the extension's
//     content then); a backing file name in the way is first copied to the
//     end of cluster 0 and the header pointed at the copy (one 8-byte
//     write); the bit is set last.
//   - Removing it: the autoclear bit is cleared, then the extension's
//     8-byte type and length become an end marker.
//
// Each step is synced before the next. A header that leaves no room for
// these steps (or whose bitmaps extension is not the last one) is
// rewritten by rewriteHeader (header_rewrite.go), with the autoclear bit
// clear during the rewrite.

// extLayout is where the bitmaps extension and the end marker are in
// cluster 0 (-1: absent), within the area before the backing file name.
type extLayout struct {
	bitmaps int64 // the last bitmaps extension's data, if exactly bitmapExtLen bytes
	next    int64 // what follows that extension
	end     int64 // the end marker
	limit   int64 // where the extension area stops
}

func scanExtensions(buf []byte, h *Header) extLayout {
	be := binary.BigEndian
	l := extLayout{bitmaps: -1, next: -1, end: -1, limit: int64(len(buf))}
	if h.BackingFileOffset != 0 && int64(h.BackingFileOffset) < l.limit {
		l.limit = max(int64(h.HeaderLength), int64(h.BackingFileOffset))
	}
	for off := int64(h.HeaderLength); off+8 <= l.limit; {
		typ, n := be.Uint32(buf[off:]), int64(be.Uint32(buf[off+4:]))
		if typ == extEnd {
			l.end = off
			break
		}
		if n > l.limit-off-8 {
			break
		}
		next := off + 8 + (n+7)&^7
		if typ == extBitmaps {
			l.bitmaps, l.next = -1, next
			if n == bitmapExtLen {
				l.bitmaps = off + 8
			}
		}
		off = next
	}
	return l
}

// writeBitmapExt makes the header name x (nil: no bitmaps), durably.
func (img *Image) writeBitmapExt(x *bitmapExtHeader) error {
	h, err := readHeader(img.f)
	if err != nil {
		return err
	}
	if err := img.checkMetaWrite(0, metaHeader); err != nil {
		return err
	}
	buf := make([]byte, img.headerBytes())
	if err := readFull(img.f, buf, 0); err != nil {
		return err
	}
	l := scanExtensions(buf, h)
	switch {
	case l.bitmaps >= 0 && x != nil:
		return img.updateBitmapExt(l.bitmaps, x.encode())
	case l.bitmaps < 0 && x != nil && l.end >= 0:
		if ok, err := img.appendBitmapExt(h, l.end, x.encode()); ok || err != nil {
			return err
		}
	case x == nil:
		if err := removeBitmapExtFile(img.f, h); err != nil {
			return err
		}
		nh, err := readHeader(img.f)
		if err != nil {
			return err
		}
		img.hdr.Bitmaps, img.hdr.AutoclearFeatures = nil, nh.AutoclearFeatures
		img.hdr.BackingFileOffset, img.hdr.HeaderLength = nh.BackingFileOffset, nh.HeaderLength
		return nil
	}
	return img.rewriteBitmapExt(h, x)
}

func (img *Image) updateBitmapExt(at int64, data []byte) error {
	if at/512 != (at+bitmapExtLen-1)/512 {
		if err := img.storeAutoclear(img.hdr.AutoclearFeatures &^ autoclearBitmaps); err != nil {
			return err
		}
	}
	if _, err := img.f.WriteAt(data, at); err != nil {
		return err
	}
	if err := img.f.Sync(); err != nil {
		return err
	}
	img.hdr.Bitmaps = data
	return img.storeAutoclear(img.hdr.AutoclearFeatures | autoclearBitmaps)
}

// appendBitmapExt adds the extension at the end marker at end; it reports
// false, having changed nothing, if cluster 0 has no room for the steps.
func (img *Image) appendBitmapExt(h *Header, end int64, data []byte) (bool, error) {
	need := end + 8 + bitmapExtLen + 8
	nameOff, nameLen := int64(h.BackingFileOffset), int64(h.BackingFileSize)
	moveName := h.BackingFileOffset != 0 && nameOff < need
	newOff := (img.headerBytes() - nameLen) &^ 7
	if need > img.headerBytes() || moveName && newOff < need {
		return false, nil
	}
	if err := img.storeAutoclear(img.hdr.AutoclearFeatures &^ autoclearBitmaps); err != nil {
		return true, err
	}
	if moveName {
		name := []byte(h.BackingFile)
		if err := writeDurable(img.f, name, newOff); err != nil {
			return true, err
		}
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], uint64(newOff))
		if err := writeDurable(img.f, b[:], 8); err != nil {
			return true, err
		}
		img.hdr.BackingFileOffset = uint64(newOff)
	}
	// The data and the new end marker go past the live end marker first;
	// then the extension's type and length replace that marker in one
	// 8-byte write (8-aligned, so inside one sector). One 40-byte write
	// could tear across a sector boundary into the type and length
	// without the new end marker, and the parser would read what lies
	// after the data (the old backing file name) as another extension.
	tail := make([]byte, bitmapExtLen+8) // data, end marker
	copy(tail, data)
	if err := writeDurable(img.f, tail, end+8); err != nil {
		return true, err
	}
	var eh [8]byte
	binary.BigEndian.PutUint32(eh[0:], extBitmaps)
	binary.BigEndian.PutUint32(eh[4:], bitmapExtLen)
	if err := writeDurable(img.f, eh[:], end); err != nil {
		return true, err
	}
	img.hdr.Bitmaps = data
	return true, img.storeAutoclear(img.hdr.AutoclearFeatures | autoclearBitmaps)
}

// rewriteBitmapExt rewrites cluster 0 with x, with the autoclear bit clear
// during the rewrite.
func (img *Image) rewriteBitmapExt(h *Header, x *bitmapExtHeader) error {
	if err := img.storeAutoclear(img.hdr.AutoclearFeatures &^ autoclearBitmaps); err != nil {
		return err
	}
	h.AutoclearFeatures = img.hdr.AutoclearFeatures
	h.Bitmaps = x.encode()
	if err := img.rewriteHeader(h); err != nil {
		return err
	}
	img.hdr.Bitmaps = h.Bitmaps
	return img.storeAutoclear(img.hdr.AutoclearFeatures | autoclearBitmaps)
}
