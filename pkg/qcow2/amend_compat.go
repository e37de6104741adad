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
	want, ok := map[string]uint32{"0.10": 2, "v2": 2, "1.1": 3, "v3": 3}[compat]
	if !ok {
		return fmt.Errorf("%w: invalid compatibility level %q", ErrInvalid, compat)
	}
	img, err := Open(path, Options{NoBacking: true})
	if err != nil {
		return err
	}
	switch {
	case img.hdr.Version == want:
	case want == 3:
		err = img.upgradeToV3()
	default:
		err = img.downgradeToV2()
	}
	if cerr := img.Close(); err == nil {
		err = cerr
	}
	return err
}

// upgradeToV3 rewrites the header as version 3 (16-bit refcounts, which
// is what version 2 has, no features).
func (img *Image) upgradeToV3() error {
	if err := img.Flush(); err != nil {
		return err
	}
	img.mu.Lock()
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
	img.mu.Lock()
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
			m, err := img.decodeL2(l1i*img.l2Entries+k, binary.BigEndian.Uint64(buf[k*8:]))
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
				w.l2 = append(w.l2, l2Update{vi, uint64(m.host) | oflagCopied})
				continue
			case !backed:
				w.l2 = append(w.l2, l2Update{vi, 0})
			default:
				c, err := img.takeCluster() // reads as zeros already
				if err != nil {
					return err
				}
				if err := img.checkDataRange(c*img.cs, img.cs); err != nil {
					return err
				}
				w.l2 = append(w.l2, l2Update{vi, uint64(c*img.cs) | oflagCopied})
			}
			img.unlink(&w, m, false)
		}
		if err := img.commit(&w); err != nil {
			return err
		}
	}
	return nil
}

// rewriteVersion rewrites cluster 0 from the header on disk as edit
// changes it, syncs, and then leaves the image read-only: the in-memory
// state still describes the old version, so nothing may write through it.
// Caller holds mu and has made everything the new header relies on
// durable.
func (img *Image) rewriteVersion(edit func(h *Header)) error {
	h, err := readHeader(img.f)
	if err != nil {
		return err
	}
	edit(h)
	buf, err := h.encode()
	if err != nil {
		return err
	}
	if err := img.checkMetaWrite(0, metaHeader); err != nil {
		return err
	}
	img.readOnly = true
	if _, err := img.f.WriteAt(buf, 0); err != nil {
		return err
	}
	return img.f.Sync()
}
