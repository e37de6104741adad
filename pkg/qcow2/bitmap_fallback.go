package qcow2

import (
	"encoding/binary"
	"slices"
)

// dropUnmaintainableBitmaps runs on a writable open, before the tables are
// loaded. If the image's bitmap directory is readable but names a bitmap
// this engine cannot keep consistent (an unknown type, unknown flags or
// extra data: QEMU refuses to open such an image at all), the spec's rule
// for autoclear features applies: the bitmaps autoclear bit is cleared, and
// with it the extension is dropped (QEMU drops an extension it ignores on
// its next header update too). The directory, tables and data clusters are
// then referenced by nothing; rather than leave them as leaks that
// `qemu-img check` reports (exit 3), the refcounts are rebuilt from what
// the image references (the crash-safe repair a dirty image gets), which
// frees exactly the unreferenced clusters. Freeing them one by one instead
// would trust clusters named by a structure the engine does not understand.
//
// An unreadable directory is left in place: openBitmaps only clears the
// autoclear bit (its clusters cannot be trusted enough to free).
func dropUnmaintainableBitmaps(f File, h *Header) (*Header, error) {
	if !bitmapsPresent(h) {
		return h, nil
	}
	x, err := decodeBitmapExt(h.Bitmaps, h.clusterSize())
	if err != nil {
		return h, nil
	}
	entries, err := readBitmapDir(f, x, h.clusterSize(), h.Size&^511)
	if err != nil || !slices.ContainsFunc(entries, func(e bitmapEntry) bool { return !e.maintainable() }) {
		return h, nil
	}
	if err := removeBitmapExtFile(f, h); err != nil {
		return nil, err
	}
	if h, err = readHeader(f); err != nil {
		return nil, err
	}
	if err := rebuildRefcounts(longRun{}, f, h); err != nil {
		return nil, err
	}
	return readHeader(f)
}

// removeBitmapExtFile removes the bitmaps extension from the header in f
// in the steps bitmap_header.go describes: the autoclear bit is cleared
// first, then the extension becomes an end marker (or, if it is not the
// last one, the header is rewritten without it, crash-safely:
// header_rewrite.go).
func removeBitmapExtFile(f File, h *Header) error {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], h.AutoclearFeatures&^autoclearBitmaps)
	if err := writeDurable(f, b[:], hdrOffAutoclear); err != nil {
		return err
	}
	fsize, err := f.Size()
	if err != nil {
		return err
	}
	buf := make([]byte, min(fsize, h.clusterSize()))
	if err := readFull(f, buf, 0); err != nil {
		return err
	}
	if l := scanExtensions(buf, h); l.bitmaps >= 0 && l.next == l.end {
		return writeDurable(f, make([]byte, 8), l.bitmaps-8)
	}
	_, err = rewriteHeaderFile(f, func(h *Header) {
		h.Bitmaps = nil
		h.AutoclearFeatures &^= autoclearBitmaps
	})
	return err
}
