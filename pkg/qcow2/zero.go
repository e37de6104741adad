package qcow2

// WriteZeroes makes [off, off+n) read as zeros. With unmap, whole clusters
// are deallocated (their host space punched out); without it, allocated
// clusters keep their space (v3 zero flag on an allocated cluster).
//
// A large range is zeroed one cached L2 slice's worth at a time, each piece under
// the lock alone: other requests run between the pieces (a discard of a
// whole disk, fstrim's, must not hold every read and write of the disk
// for its duration, which the kernel's NBD client would see as a dead
// connection after 30 s). Requests that overlap the range may see it
// partly zeroed meanwhile, as they may with any two overlapping requests.
func (img *Image) WriteZeroes(off, n int64, unmap bool) error {
	if err := img.prepareWrite(); err != nil {
		return err
	}
	if n <= 0 || off < 0 {
		img.lockQuiesced()
		defer img.mu.Unlock()
		return img.checkRange(off, n)
	}
	img.mu.RLock()
	err, piece := img.checkRange(off, n), img.sliceEntries*img.cs
	img.mu.RUnlock()
	if err != nil {
		return err
	}
	for end := off + n; off < end; {
		// Pieces end on L2 slice boundaries (32 MiB at 64 KiB clusters).
		stop := min(end, (off/piece+1)*piece)
		if err := img.zeroPiece(off, stop-off, unmap); err != nil {
			return err
		}
		off = stop
	}
	return nil
}

// zeroPiece is WriteZeroes of a range within one L2 slice.
func (img *Image) zeroPiece(off, n int64, unmap bool) error {
	img.lockQuiescedRange(off>>img.cb, (off+n-1)>>img.cb)
	defer img.mu.Unlock()
	// The size may have changed (a shrink) since the range was checked.
	if err := img.checkRange(off, n); err != nil {
		return err
	}
	if err := img.writable(); err != nil {
		return err
	}
	img.markBitmaps(off, n)
	return img.zeroLocked(off, n, unmap)
}

// Discard deallocates [off, off+n): afterwards it reads as zeros. On a
// version 2 image with a backing file there is no way to hide the backing
// data without storing zeros, and discard is only a hint, so it does nothing.
func (img *Image) Discard(off, n int64) error {
	// The version is read under mu: SetCompat rewrites it. Should it
	// change before WriteZeroes runs, the discard zeroes instead, which a
	// discard may do.
	img.mu.RLock()
	if img.hdr.Version < 3 && img.backing != nil {
		defer img.mu.RUnlock()
		return img.checkRange(off, n)
	}
	img.mu.RUnlock()
	return img.WriteZeroes(off, n, true)
}

func (img *Image) zeroLocked(off, n int64, unmap bool) error {
	if n == 0 {
		return nil
	}
	if err := img.markDirty(); err != nil {
		return err
	}
	end := off + n
	a := ceilDiv(off, img.cs) * img.cs
	b := end / img.cs * img.cs
	if a > b { // inside one cluster
		return img.zeroPartial(off, end)
	}
	if err := img.zeroPartial(off, a); err != nil {
		return err
	}
	if err := img.zeroPartial(b, end); err != nil {
		return err
	}
	for vi := a / img.cs; vi < b/img.cs; {
		// One L2 table at a time, so that reservations stay bounded.
		stop := min(b/img.cs, (vi/img.l2Entries+1)*img.l2Entries)
		if err := img.zeroClusters(vi, stop, unmap); err != nil {
			return err
		}
		if err := img.settleFrees(); err != nil {
			return err
		}
		vi = stop
	}
	return nil
}

// zeroPartial zeroes a range inside one cluster by writing zeros, unless it
// reads as zeros already.
func (img *Image) zeroPartial(from, to int64) error {
	if from >= to {
		return nil
	}
	if img.ext {
		return img.zeroPartialExt(from, to)
	}
	m, err := img.lookup(from / img.cs)
	if err != nil {
		return err
	}
	switch m.kind {
	case kindZero:
		return nil
	case kindUnallocated:
		if zero, err := diskIsZero(img.backing, from, to-from); err != nil || zero {
			return err
		}
	}
	return img.writeLocked(make([]byte, to-from), from)
}

// zeroClusters zeroes whole guest clusters [first, stop) of one L2 table.
func (img *Image) zeroClusters(first, stop int64, unmap bool) error {
	// Zeroing needs at most a new L2 table, and a fresh cluster per guest
	// cluster only where zeros must be stored (version 2 over a backing
	// file). Reserving a cluster per zeroed cluster regardless made a
	// discard of a whole empty disk reserve (and leak on a kill) the
	// disk's size.
	need := int64(1)
	if img.hdr.Version < 3 && img.backing != nil {
		need += stop - first
	}
	if err := img.ensureReserved(need); err != nil {
		return err
	}
	var w writeBatch
	v3 := img.hdr.Version >= 3
	for vi := first; vi < stop; vi++ {
		m, err := img.lookup(vi)
		if err != nil {
			return err
		}
		if img.ext {
			if err := img.planZeroExt(&w, vi, m, unmap); err != nil {
				return err
			}
			continue
		}
		var want uint64
		switch {
		case m.kind == kindZero && (!unmap || m.host == 0):
			continue
		case m.kind == kindUnallocated:
			zero, err := diskIsZero(img.backing, vi*img.cs, img.cs)
			if err != nil {
				return err
			}
			if zero {
				continue
			}
		}
		if _, err := img.prepareL2(vi / img.l2Entries); err != nil {
			return err
		}
		switch {
		case v3 && !unmap && m.kind == kindData && m.copied:
			want = uint64(m.host) | oflagCopied | oflagZero
			w.l2 = append(w.l2, l2Update{vi, want, 0})
			continue
		case v3:
			want = oflagZero
		case img.backing == nil:
			want = 0
		case m.kind == kindData && m.copied:
			// Version 2 over a backing file: zeros must be stored.
			w.punch = append(w.punch, clusterRun{m.host / img.cs, 1})
			continue
		default:
			host, err := img.takeFreshCluster()
			if err != nil {
				return err
			}
			want = uint64(host) | oflagCopied
		}
		w.l2 = append(w.l2, l2Update{vi, want, 0})
		img.unlink(&w, m, true)
	}
	return img.commit(&w)
}
