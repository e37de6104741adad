package qcow2

import "slices"

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
	h.Bitmaps = nil
	h.AutoclearFeatures &^= autoclearBitmaps
	buf, err := h.encode()
	if err != nil {
		return nil, err
	}
	if _, err := f.WriteAt(buf, 0); err != nil {
		return nil, err
	}
	if err := f.Sync(); err != nil {
		return nil, err
	}
	if h, err = readHeader(f); err != nil {
		return nil, err
	}
	if err := rebuildRefcounts(f, h); err != nil {
		return nil, err
	}
	return readHeader(f)
}
