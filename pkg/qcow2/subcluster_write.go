package qcow2

import "math/bits"

// planWriteExt is planWrite for extended L2 images (compressed clusters
// aside: they have no subclusters). Only the subclusters
// the chunk touches are written and become allocated; the others keep
// their state, so a small write over a backing file copies at most the
// rest of its first and last subcluster, never the whole cluster.
//
// The host cluster is written in place when this image owns it (COPIED);
// otherwise (no host cluster, or one shared with a snapshot) a fresh
// cluster is taken and the subclusters stored in the old one are copied
// along. Crash rule: if the L2 entry reached the disk without the data, a
// newly allocated subcluster would read what the host cluster holds there.
// That is zeros for a fresh cluster, but an unallocated subcluster of an
// existing cluster can still hold bytes from before it was zeroed or
// discarded. So the batch syncs before the L2 write whenever what the
// guest read there before, or what the host holds there now, is not zeros.
func (img *Image) planWriteExt(w *writeBatch, vi, in int64, chunk []byte, m mapping) error {
	touched := img.subBits(in, int64(len(chunk)))
	alloc := m.bitmap & l2BitmapAllAlloc
	if m.kind == kindData {
		alloc = l2BitmapAllAlloc
	}
	inPlace := m.host != 0 && m.copied
	host := m.host
	if inPlace {
		if err := img.checkDataRange(host, img.cs); err != nil {
			return err
		}
	} else {
		var err error
		if host, err = img.takeFreshCluster(); err != nil {
			return err
		}
	}

	// The touched subclusters with their current guest content, the
	// chunk laid over it.
	s0 := in / img.scs
	spanOff := s0 * img.scs
	span := make([]byte, (int64(bits.Len64(touched))-s0)*img.scs)
	if err := img.readCluster(span, vi*img.cs+spanOff, m); err != nil {
		return err
	}
	newly := touched
	if inPlace {
		newly &^= alloc
	}
	err := bitRuns(newly, func(s, e int64) error {
		part := span[(s-s0)*img.scs : (e-s0)*img.scs]
		if !isZero(part) {
			w.needSync = true
			return nil
		}
		if !inPlace {
			return nil
		}
		old := make([]byte, len(part))
		if err := readFull(img.f, old, host+s*img.scs); err != nil {
			return err
		}
		w.needSync = w.needSync || !isZero(old)
		return nil
	})
	if err != nil {
		return err
	}
	copy(span[in-spanOff:], chunk)

	if carried := alloc &^ touched; !inPlace && carried != 0 {
		// Copy-on-write of a shared cluster: its stored subclusters move
		// along, and must be durable before the entry points at them.
		buf := make([]byte, img.cs)
		err := bitRuns(carried, func(s, e int64) error {
			return readFull(img.f, buf[s*img.scs:e*img.scs], m.host+s*img.scs)
		})
		if err != nil {
			return err
		}
		w.needSync = w.needSync || !isZero(buf)
		copy(buf[spanOff:], span)
		w.data = append(w.data, hostWrite{host, buf})
	} else {
		w.data = append(w.data, hostWrite{host + spanOff, span})
	}

	entry := uint64(host) | oflagCopied
	// Touched subclusters are stored now; the others keep their state.
	bitmap := alloc | touched | (m.bitmap&^l2BitmapAllAlloc)&^(touched<<32)
	if entry != m.raw || bitmap != m.bitmap {
		w.l2 = append(w.l2, l2Update{vi, entry, bitmap})
	}
	if !inPlace {
		img.unlink(w, m, false)
	}
	return nil
}
