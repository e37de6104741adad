package qcow2

import "errors"

// Write-zeroes and discard on extended L2 images: whole subclusters turn
// into zero subclusters by a change of the L2 bitmap alone, whole clusters
// into zero clusters as on other version 3 images. A subcluster that
// stops being allocated keeps its old bytes in the host cluster; the
// write path checks for them before it reuses the subcluster
// (planWriteExt), so nothing has to be written here.

var errNotZero = errors.New("not zero")

// zeroPartialExt zeroes [from, to) inside one cluster: the whole
// subclusters through the bitmap, the pieces at either end by writing
// zeros.
func (img *Image) zeroPartialExt(from, to int64) error {
	a := ceilDiv(from, img.scs) * img.scs
	b := to / img.scs * img.scs
	if a >= b {
		return img.writeZerosUnlessZero(from, to)
	}
	if err := img.writeZerosUnlessZero(from, a); err != nil {
		return err
	}
	if err := img.writeZerosUnlessZero(b, to); err != nil {
		return err
	}
	return img.zeroSubclusters(a, b)
}

// writeZerosUnlessZero writes zeros over [from, to) unless the metadata
// says the range reads as zeros already.
func (img *Image) writeZerosUnlessZero(from, to int64) error {
	if from >= to {
		return nil
	}
	if zero, err := img.readsZero(from, to-from); err != nil || zero {
		return err
	}
	return img.writeLocked(make([]byte, to-from), from)
}

// readsZero reports whether the metadata (of this image and, where it
// leaves ranges unallocated, of the backing chain) says [off, off+n)
// reads as zeros.
func (img *Image) readsZero(off, n int64) (bool, error) {
	err := img.walk(off, n, func(r run) error {
		switch r.m.kind {
		case kindZero:
			return nil
		case kindUnallocated:
			zero, err := diskIsZero(img.backing, r.off, r.n)
			if err == nil && !zero {
				err = errNotZero
			}
			return err
		}
		return errNotZero
	})
	if errors.Is(err, errNotZero) {
		return false, nil
	}
	return err == nil, err
}

// zeroSubclusters makes the whole subclusters [a, b) of one cluster zero
// subclusters. A compressed cluster has no subclusters: it is rewritten.
func (img *Image) zeroSubclusters(a, b int64) error {
	vi := a / img.cs
	m, err := img.lookup(vi)
	if err != nil {
		return err
	}
	if m.kind == kindCompressed {
		return img.writeLocked(make([]byte, b-a), a)
	}
	sub := img.subBits(a%img.cs, b-a)
	alloc := m.bitmap & l2BitmapAllAlloc
	if alloc&sub == 0 {
		if zero, err := img.readsZero(a, b-a); err != nil || zero {
			return err
		}
	}
	bitmap := alloc&^sub | m.bitmap&^l2BitmapAllAlloc | sub<<32
	if bitmap == m.bitmap {
		return nil
	}
	if err := img.ensureReserved(1); err != nil {
		return err
	}
	if _, err := img.prepareL2(vi / img.l2Entries); err != nil {
		return err
	}
	return img.commit(&writeBatch{l2: []l2Update{{vi, m.raw, bitmap}}})
}

// planZeroExt adds to w what zeroes whole guest cluster vi: a zero
// cluster that keeps its host cluster (without unmap, when this image
// owns it) or one without (the host cluster is released).
func (img *Image) planZeroExt(w *writeBatch, vi int64, m mapping, unmap bool) error {
	switch {
	case m.kind == kindZero && (!unmap || m.host == 0):
		return nil
	case m.host == 0 && m.kind != kindCompressed:
		if zero, err := img.readsZero(vi*img.cs, img.cs); err != nil || zero {
			return err
		}
	}
	if _, err := img.prepareL2(vi / img.l2Entries); err != nil {
		return err
	}
	if !unmap && m.host != 0 && m.copied && m.kind != kindCompressed {
		w.l2 = append(w.l2, l2Update{vi, uint64(m.host) | oflagCopied, bitmapAllZero})
		return nil
	}
	w.l2 = append(w.l2, l2Update{vi, 0, bitmapAllZero})
	img.unlink(w, m, true)
	return nil
}
