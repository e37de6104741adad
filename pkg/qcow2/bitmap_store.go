package qcow2

import (
	"slices"
)

// storeBitmapsLocked writes the in-memory bitmaps back (QEMU's
// qcow2_store_persistent_dirty_bitmaps, at close). The caller holds mu
// exclusively and has flushed; no guest write follows.
//
// Ordering (DESIGN.md rule 3): bitmap data, tables and the new directory go
// to clusters whose refcounts are already set (reserved or allocated at the
// end of the file) and are synced before the header extension names the new
// directory; the header write is synced before the old clusters are freed.
// A crash before the header write leaves the old directory with the bitmaps
// in use (and leaked clusters); after it, the new one (and leaked clusters).
func (img *Image) storeBitmapsLocked() error {
	s := &img.bm
	if len(s.mem) == 0 {
		return nil
	}
	img.bm.live.Store(nil)
	entries := slices.Clone(s.entries)
	var freed []int64
	rewritten := false
	for _, b := range s.mem {
		i := slices.IndexFunc(entries, func(e bitmapEntry) bool { return e.name == b.name })
		if i < 0 {
			entries = append(entries, bitmapEntry{name: b.name, typ: bitmapTypeDirty, granBits: b.granBits})
			i = len(entries) - 1
			rewritten = true
		}
		e := &entries[i]
		e.flags &^= bmeFlagInUse | bmeFlagAuto
		if b.enabled {
			e.flags |= bmeFlagAuto
		}
		keep := e.tableOff != 0 && !b.changed.Load() && !b.fresh &&
			uint64(e.tableSize) == bitmapTableClusters(uint64(img.size), b.granBits, img.cs)
		if keep {
			continue
		}
		if e.tableOff != 0 {
			old, err := img.bitmapClusters(&s.entries[i])
			if err != nil {
				return err
			}
			freed = append(freed, old...)
		}
		off, n, err := img.writeBitmap(b)
		if err != nil {
			return err
		}
		e.tableOff, e.tableSize = off, n
		rewritten = true
	}
	if !rewritten {
		// Only in-use flags are cleared: rewrite the directory in place.
		s.entries = entries
		return img.writeDirInPlace()
	}
	return img.switchBitmapDir(entries, freed)
}

// writeBitmap writes a bitmap's non-zero data clusters and its table to
// fresh clusters and returns the table's offset and size.
func (img *Image) writeBitmap(b *liveBitmap) (uint64, uint32, error) {
	n := bitmapTableClusters(uint64(img.size), b.granBits, img.cs)
	table := make([]uint64, n)
	for k := range table {
		data := b.clusterData(int64(k), img.cs)
		if data == nil {
			continue
		}
		c, err := img.takeCluster()
		if err != nil {
			return 0, 0, err
		}
		if err := img.writeNewMeta(data, c, metaBitmaps); err != nil {
			return 0, 0, err
		}
		table[k] = uint64(c * img.cs)
	}
	buf := make([]byte, ceilDiv(int64(n)*8, img.cs)*img.cs)
	putU64s(buf, table)
	off, err := img.writeFreshMeta(buf)
	if err != nil {
		return 0, 0, err
	}
	return off, uint32(n), nil
}

// writeFreshMeta writes buf (whole clusters) to newly allocated clusters
// recorded as bitmap metadata, and returns their offset.
func (img *Image) writeFreshMeta(buf []byte) (uint64, error) {
	ncl := int64(len(buf)) / img.cs
	var start int64
	var err error
	if ncl == 1 {
		start, err = img.takeCluster()
	} else {
		start, err = img.allocRunLive(ncl)
	}
	if err != nil {
		return 0, err
	}
	if err := img.writeNewMeta(buf, start, metaBitmaps); err != nil {
		return 0, err
	}
	return uint64(start * img.cs), nil
}

// writeDirInPlace rewrites the directory where it is, durably; only flag
// bits may differ from what is there.
func (img *Image) writeDirInPlace() error {
	dir := encodeBitmapDir(img.bm.entries)
	if uint64(len(dir)) != img.bm.ext.dirSize {
		return img.corruption("the bitmap directory changed size (%d, was %d)", len(dir), img.bm.ext.dirSize)
	}
	if err := img.checkMetaWrite(int64(img.bm.ext.dirOff), metaBitmaps); err != nil {
		return err
	}
	if _, err := img.f.WriteAt(dir, int64(img.bm.ext.dirOff)); err != nil {
		return err
	}
	return img.f.Sync()
}

// switchBitmapDir writes entries as a new directory (or, with none left,
// removes the extension), points the header at it and then frees the old
// directory and the clusters in freed.
func (img *Image) switchBitmapDir(entries []bitmapEntry, freed []int64) error {
	var x *bitmapExtHeader
	if len(entries) > 0 {
		if len(entries) > maxBitmaps {
			return errorf(ErrRange, "too many bitmaps (at most %d)", maxBitmaps)
		}
		dir := encodeBitmapDir(entries)
		if uint64(len(dir)) > maxBitmapDirSize {
			return errorf(ErrRange, "the bitmap directory would exceed %d bytes", maxBitmapDirSize)
		}
		buf := make([]byte, ceilDiv(int64(len(dir)), img.cs)*img.cs)
		copy(buf, dir)
		off, err := img.writeFreshMeta(buf)
		if err != nil {
			return err
		}
		x = &bitmapExtHeader{n: uint32(len(entries)), dirSize: uint64(len(dir)), dirOff: off}
	}
	if err := img.f.Sync(); err != nil {
		return err
	}
	old := img.bm.ext
	if err := img.writeBitmapExt(x); err != nil {
		return err
	}
	if old != nil {
		for c := int64(old.dirOff) / img.cs; c < ceilDiv(int64(old.dirOff+old.dirSize), img.cs); c++ {
			freed = append(freed, c)
		}
	}
	img.bm.ext, img.bm.entries = x, entries
	return img.applyFrees(freed)
}

// headerBytes is how much of cluster 0 holds the header (the whole cluster,
// or the file if it is shorter).
func (img *Image) headerBytes() int64 {
	fsize, err := img.f.Size()
	if err != nil {
		return img.cs
	}
	return min(img.cs, fsize)
}

// storeAutoclear writes autoclear_features, durably, if it changes.
func (img *Image) storeAutoclear(v uint64) error {
	if img.hdr.AutoclearFeatures == v {
		return nil
	}
	if err := img.writeHeaderU64(hdrOffAutoclear, v); err != nil {
		return err
	}
	img.hdr.AutoclearFeatures = v
	return img.f.Sync()
}
