package qcow2

import (
	"encoding/binary"
	"fmt"
)

// AmendCompat changes the image's version in place, like qemu-img amend
// -o compat=: "0.10" (version 2) or "1.1" (version 3). Asking for the
// version the image has does nothing.
//
// Upgrading rewrites the header only. Downgrading is refused, changing
// nothing, when the image uses what version 2 cannot express: refcount
// widths other than 16 bits, incompatible features (external data file,
// extended L2 entries, corrupt bit), zstd-compressed clusters, persistent
// bitmaps, internal snapshots whose size differs from the image's or whose
// tables hold zero clusters. Otherwise lazy refcounts are turned off
// (making the refcounts exact first), every zero cluster of the active
// layer is expanded (deallocated without a backing file; else given a
// cluster of zeros, or, if preallocated and owned alone, its own cluster
// zeroed), all of that is made durable, and only then is the header
// rewritten as version 2 and synced: a crash before that last write leaves
// a valid version 3 image that reads the same.
func AmendCompat(path, compat string) error {
	img, err := Open(path, Options{NoBacking: true})
	if err != nil {
		return err
	}
	err = img.SetCompat(compat)
	if cerr := img.Close(); err == nil {
		err = cerr
	}
	return err
}

// SetCompat is AmendCompat on an open image. After a version change the
// image is read-only (its in-memory state describes the old version):
// close it and open it again to go on.
func (img *Image) SetCompat(compat string) error {
	want, ok := map[string]uint32{"0.10": 2, "v2": 2, "1.1": 3, "v3": 3}[compat]
	if !ok {
		return fmt.Errorf("%w: invalid compatibility level %q", ErrInvalid, compat)
	}
	img.mu.RLock()
	have := img.hdr.Version
	img.mu.RUnlock()
	switch {
	case have == want:
		return nil
	case want == 3:
		return img.upgradeToV3()
	}
	return img.downgradeToV2()
}

// upgradeToV3 rewrites the header as version 3 (16-bit refcounts, which
// is what version 2 has, no features).
func (img *Image) upgradeToV3() error {
	if err := img.Flush(); err != nil {
		return err
	}
	img.lockQuiesced()
	defer img.mu.Unlock()
	if err := img.writable(); err != nil {
		return err
	}
	t, err := readSnapshotTable(img.f, img.hdr)
	if err != nil {
		return err
	}
	for _, e := range t.Entries {
		if e.ExtraDataSize < snapshotMinV3Extra {
			return fmt.Errorf("%w: snapshot %q has no 64-bit VM state size and disk size (old version 2 entry); rewriting the snapshot table is not supported by this tool", ErrUnsupported, e.ID)
		}
	}
	if err := img.closeCleanLocked(); err != nil {
		return err
	}
	return img.rewriteVersion(func(h *Header) {
		h.Version = 3
		h.RefcountOrder = 4
		h.IncompatibleFeatures, h.CompatibleFeatures, h.AutoclearFeatures = 0, 0, 0
		h.CompressionType = 0
	})
}

// downgradeToV2: see AmendCompat.
func (img *Image) downgradeToV2() error {
	if err := img.Flush(); err != nil {
		return err
	}
	img.lockQuiesced()
	defer img.mu.Unlock()
	if err := img.writable(); err != nil {
		return err
	}
	if err := img.checkDowngrade(); err != nil {
		return err
	}
	// From here on the image changes; every step leaves a valid v3 image.
	if img.lazy() {
		if err := img.closeCleanLocked(); err != nil {
			return err
		}
		if err := img.storeCompatLocked(img.hdr.CompatibleFeatures &^ compatLazyRefcounts); err != nil {
			return err
		}
	}
	if err := img.expandZeroClusters(); err != nil {
		return err
	}
	if err := img.flushLocked(nil); err != nil {
		return err
	}
	if err := img.closeCleanLocked(); err != nil {
		return err
	}
	return img.rewriteVersion(func(h *Header) {
		h.Version = 2
		h.IncompatibleFeatures, h.CompatibleFeatures, h.AutoclearFeatures = 0, 0, 0
		h.CompressionType = 0
		h.FeatureNames = nil
	})
}

// checkDowngrade refuses what version 2 cannot express. Caller holds mu.
func (img *Image) checkDowngrade() error {
	h := img.hdr
	if h.RefcountOrder != 4 {
		return fmt.Errorf("%w: compat=0.10 requires refcount_bits=16", ErrUnsupported)
	}
	if v := img.hdrIncompat.Load() &^ (incompatDirty | incompatCompression); v != 0 {
		return fmt.Errorf("%w: cannot downgrade an image with incompatible features %#x set", ErrUnsupported, v)
	}
	if h.Bitmaps != nil || h.AutoclearFeatures&autoclearBitmaps != 0 {
		return fmt.Errorf("%w: cannot downgrade an image with persistent bitmaps", ErrUnsupported)
	}
	if h.DataFile != "" {
		return fmt.Errorf("%w: cannot downgrade an image with an external data file", ErrUnsupported)
	}
	t, err := readSnapshotTable(img.f, img.hdr)
	if err != nil {
		return err
	}
	fsize, err := img.f.Size()
	if err != nil {
		return err
	}
	trees := []string{""}
	for _, e := range t.Entries {
		if int64(e.DiskSize) != img.size || e.VMStateSize > 0xffffffff {
			return fmt.Errorf("%w: internal snapshots prevent downgrade of image (snapshot %q has another disk size or a VM state over 4 GiB)", ErrUnsupported, e.ID)
		}
		trees = append(trees, e.ID)
	}
	for _, id := range trees {
		tree, err := img.treeLocked(id)
		if err != nil {
			return err
		}
		zero, compressed, err := img.treeKinds(&tree, fsize)
		if err != nil {
			return err
		}
		if compressed && h.CompressionType != 0 {
			return fmt.Errorf("%w: cannot downgrade an image with zstd compression type and existing compressed clusters", ErrUnsupported)
		}
		if zero && id != "" {
			return fmt.Errorf("%w: cannot downgrade: internal snapshot %q holds zero clusters (this tool expands the zero clusters of the active layer only)", ErrUnsupported, id)
		}
	}
	return nil
}

// treeKinds reports whether a tree has zero clusters and compressed
// clusters. Caller holds mu.
func (img *Image) treeKinds(tree *layerTree, fsize int64) (zero, compressed bool, err error) {
	buf := make([]byte, img.cs)
	span := img.cs * img.l2Entries
	for l1i := int64(0); l1i < ceilDiv(tree.size, span); l1i++ {
		ok, err := img.l2Table(tree, l1i, buf, fsize)
		if err != nil {
			return false, false, err
		}
		if !ok {
			continue
		}
		for k := int64(0); k < img.l2Entries && l1i*span+k*img.cs < tree.size; k++ {
			e, bitmap := img.entryAt(buf, k)
			m, err := img.decodeL2(l1i*img.l2Entries+k, e, bitmap)
			if err != nil {
				return false, false, err
			}
			zero = zero || m.kind == kindZero
			compressed = compressed || m.kind == kindCompressed
		}
	}
	return zero, compressed, nil
}

// expandZeroClusters rewrites every zero cluster of the active layer as a
// version 2 image can read it, one L2 table at a time, through the normal
// write batches (data and its sync before the L2 entries). Caller holds mu.
func (img *Image) expandZeroClusters() error {
	backed := img.hdr.BackingFile != ""
	zeros := make([]byte, img.cs)
	span := img.cs * img.l2Entries
	for l1i := int64(0); l1i < ceilDiv(img.size, span); l1i++ {
		if img.l1[l1i]&l1OffsetMask == 0 {
			continue
		}
		first, stop := l1i*img.l2Entries, min(ceilDiv(img.size, img.cs), (l1i+1)*img.l2Entries)
		if err := img.ensureReserved(stop - first + 1); err != nil {
			return err
		}
		var w writeBatch
		for vi := first; vi < stop; vi++ {
			m, err := img.lookup(vi)
			if err != nil {
				return err
			}
			if m.kind != kindZero {
				continue
			}
			if _, err := img.prepareL2(l1i); err != nil {
				return err
			}
			switch {
			case m.host != 0 && m.copied:
				// Its own cluster, which may still hold old data: zero
				// it, durably, before the entry makes it readable.
				if err := img.checkDataRange(m.host, img.cs); err != nil {
					return err
				}
				w.data = append(w.data, hostWrite{m.host, zeros})
				w.needSync = true
				w.l2 = append(w.l2, l2Update{vi, uint64(m.host) | oflagCopied, 0})
				continue
			case !backed:
				w.l2 = append(w.l2, l2Update{vi, 0, 0})
			default:
				host, err := img.takeFreshCluster() // reads as zeros already
				if err != nil {
					return err
				}
				w.l2 = append(w.l2, l2Update{vi, uint64(host) | oflagCopied, 0})
			}
			img.unlink(&w, m, false)
		}
		if err := img.commit(&w); err != nil {
			return err
		}
	}
	return nil
}

// rewriteVersion rewrites the header from the one on disk as edit
// changes it, crash-safely (rewriteHeaderLocked): a crash at any point
// leaves the old header or the new one (or, on the way, the old one
// without its feature name table). Afterwards the image is read-only: its
// in-memory state describes the old version. Caller holds mu and has made
// everything the new header relies on durable.
func (img *Image) rewriteVersion(edit func(h *Header)) error {
	img.readOnly = true
	_, err := img.rewriteHeaderLocked(edit)
	return err
}

// sectorSize is the unit a disk writes atomically.
const sectorSize = 512

// headerLen is where the header extensions of h start.
func headerLen(h *Header) int64 {
	if h.Version < 3 {
		return v2HeaderLen
	}
	return int64(h.HeaderLength)
}

// extensionsEnd returns the offset just past the end-of-extensions marker
// of the header bytes buf whose extensions start at hl.
func extensionsEnd(buf []byte, hl int64) (int64, error) {
	for off := hl; ; {
		if off < 0 || off+8 > int64(len(buf)) {
			return 0, errorf(ErrInvalid, "header extensions run past cluster 0")
		}
		typ, n := binary.BigEndian.Uint32(buf[off:]), int64(binary.BigEndian.Uint32(buf[off+4:]))
		off += 8
		if typ == 0 {
			return off, nil
		}
		off += (n + 7) &^ 7
	}
}

// withoutExtension returns header bytes buf (extensions from hl) with the
// extension typ removed and the later ones moved up.
func withoutExtension(buf []byte, hl int64, typ uint32) ([]byte, error) {
	end, err := extensionsEnd(buf, hl)
	if err != nil {
		return nil, err
	}
	out := make([]byte, len(buf))
	copy(out, buf[:hl])
	w := hl
	for off := hl; off < end; {
		t, n := binary.BigEndian.Uint32(buf[off:]), int64(binary.BigEndian.Uint32(buf[off+4:]))
		l := 8 + (n+7)&^7
		if t == 0 {
			l = 8
		}
		if t != typ {
			copy(out[w:], buf[off:off+l])
			w += l
		}
		off += l
	}
	return out, nil
}
