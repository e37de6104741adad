package qcow2

// clusterKind is what an L2 entry says about one guest cluster.
type clusterKind uint8

const (
	kindUnallocated clusterKind = iota // read from the backing file, or zeros
	kindZero                           // reads as zeros (v3 zero flag)
	kindData                           // stored at a host offset
	kindCompressed                     // stored compressed
	// kindSub: an extended L2 cluster whose subclusters are not all in
	// one state; subKind says what each of them is (subcluster.go).
	kindSub
)

// mapping is the decoded L2 entry of one guest cluster.
type mapping struct {
	kind   clusterKind
	host   int64 // host offset of the cluster (kindData; kindZero if preallocated)
	copied bool  // OFLAG_COPIED: refcount is exactly 1, writable in place
	raw    uint64
	bitmap uint64 // extended L2: the subcluster allocation/zero bitmap
}

// sliceKey returns the host offset of the L2 slice holding entry vi of
// the table at l2off, and its cache hint: the guest slice number, so a
// cache that covers the disk finds every slice without a lock.
func (img *Image) sliceKey(l2off, vi int64) (int64, uint64) {
	return l2off + (vi&(img.l2Entries-1))>>img.sliceBits*img.sliceEntries*img.l2es, uint64(vi >> img.sliceBits)
}

// l2Slice returns the cached L2 slice holding entry vi of the table at l2off.
func (img *Image) l2Slice(l2off, vi int64) ([]byte, int64, error) {
	sliceOff, hint := img.sliceKey(l2off, vi)
	if buf := img.l2c.cached(sliceOff, hint); buf != nil {
		return buf, sliceOff, nil
	}
	return img.loadL2Slice(sliceOff, vi)
}

// loadL2Slice is l2Slice's miss path, apart so that l2Slice inlines.
func (img *Image) loadL2Slice(sliceOff, vi int64) ([]byte, int64, error) {
	buf, err := img.l2c.get(sliceOff, uint64(vi>>img.sliceBits), func(b []byte) error {
		if img.jr.slices != nil && img.pinnedSlice(b, sliceOff) {
			return nil // it holds entries that are in the journal only
		}
		return readFull(img.f, b, sliceOff)
	})
	return buf, sliceOff, err
}

// lookup decodes the mapping of guest cluster vi. It runs for every
// request, so it uses shifts and masks, not divisions.
func (img *Image) lookup(vi int64) (mapping, error) {
	l1i := vi >> img.l2Bits
	if l1i >= int64(len(img.l1)) {
		return mapping{}, nil
	}
	l2off, err := img.l2Offset(l1i)
	if err != nil || l2off == 0 {
		return mapping{}, err
	}
	buf, _, err := img.l2Slice(l2off, vi)
	if err != nil {
		return mapping{}, err
	}
	e, bm := img.entryAt(buf, vi&(img.sliceEntries-1))
	return img.decodeL2(vi, e, bm)
}

// l2Offset returns the validated host offset of L2 table l1i (0: none).
func (img *Image) l2Offset(l1i int64) (int64, error) {
	off := int64(img.l1[l1i] & l1OffsetMask)
	if off&(img.cs-1) != 0 {
		return 0, img.badL2Offset(off, l1i)
	}
	return off, nil
}

// badL2Offset and badHostOffset report malformed entries; they are
// separate so that the lookup path stays small enough to inline.
func (img *Image) badL2Offset(off, l1i int64) error {
	return img.corruptionOrInvalid("L2 table offset %#x of L1 entry %d is not cluster aligned", off, l1i)
}

func (img *Image) badHostOffset(vi, host int64) error {
	return img.corruptionOrInvalid("cluster %d is mapped to unaligned host offset %#x", vi, host)
}

func (img *Image) decodeL2(vi int64, e, bitmap uint64) (mapping, error) {
	m := mapping{raw: e, copied: e&oflagCopied != 0, bitmap: bitmap}
	if e&oflagCompressed != 0 {
		m.kind = kindCompressed
		m.copied = false
		return m, nil
	}
	m.host = int64(e & l2OffsetMask)
	if m.host&(img.cs-1) != 0 {
		return m, img.badHostOffset(vi, m.host)
	}
	switch {
	case img.ext:
		return img.decodeExt(vi, m)
	case e&oflagZero != 0 && img.hdr.Version >= 3:
		m.kind = kindZero
	case m.host != 0:
		m.kind = kindData
	default:
		m.kind = kindUnallocated
	}
	return m, nil
}

// corruptionOrInvalid reports bad metadata found while reading: writable
// images are marked corrupt (as QEMU does), read-only ones just fail.
func (img *Image) corruptionOrInvalid(format string, args ...any) error {
	if img.readOnly {
		return errorf(ErrInvalid, format, args...)
	}
	return img.corruption(format, args...)
}
