package qcow2

import "math/bits"

// The copy of a live collapse (live_collapse.go): the top takes over, from
// the layers the collapse drops, every subcluster it still leaves to its
// backing file, while the guest writes to the same top.
//
// The choice of what to copy is made from metadata without the top's lock
// (collapseNeeds): the layers below the top are read-only, so what they
// read never changes. What the top itself defines does change, so the
// copy checks it again under the exclusive lock, cluster by cluster, and
// copies into a subcluster only if the top still leaves it undefined
// (collapseFill). A guest write that got there first wins; one that comes
// later waits for the copy like any allocating write (waitAllocatable),
// or overwrites it in place afterwards.

// clusterNeed is what one guest cluster of the top needs from the dropped
// layers: bit s stands for subcluster s (bit 0 for the whole cluster of
// an image without extended L2 entries).
type clusterNeed struct {
	vi   int64
	data uint64 // subclusters to copy
	zero uint64 // subclusters that read as zeros there, whole: a zero flag does
}

// collapseNeeds lists, in guest order, the clusters of exts (a Map of a
// range of the top) whose content comes from a layer above depth
// baseDepth, or from the top's own "past the end of my backing file"
// zeros: once the top's backing file is the layer at baseDepth, it reads
// the same only if it defines those bytes itself. A subcluster that reads
// as zeros all through from such layers is marked zero, one with data
// anywhere in it data.
func (img *Image) collapseNeeds(exts []Extent, baseDepth int) []clusterNeed {
	var out []clusterNeed
	var cur struct {
		vi           int64
		any, notZero uint64
	}
	cur.vi = -1
	flush := func() {
		if cur.any != 0 {
			out = append(out, clusterNeed{vi: cur.vi, data: cur.any & cur.notZero, zero: cur.any &^ cur.notZero})
		}
	}
	for _, e := range exts {
		need := e.Depth < baseDepth && !(e.Depth == 0 && e.Present)
		zero := need && !e.Data
		for pos, end := e.Start, e.Start+e.Length; pos < end; {
			vi := pos >> img.cb
			cend := min(end, (vi+1)<<img.cb)
			if vi != cur.vi {
				flush()
				cur.vi, cur.any, cur.notZero = vi, 0, 0
			}
			b := img.subBits(pos-vi<<img.cb, cend-pos)
			if need {
				cur.any |= b
			}
			if !zero {
				cur.notZero |= b
			}
			pos = cend
		}
	}
	flush()
	return out
}

// undefinedSubs returns the subclusters of a cluster mapped by m that read
// from the backing file (bit 0 for the whole cluster without extended L2
// entries).
func (img *Image) undefinedSubs(m mapping) uint64 {
	switch m.kind {
	case kindUnallocated:
		if img.ext {
			return l2BitmapAllAlloc
		}
		return 1
	case kindSub:
		return ^(m.bitmap | m.bitmap>>32) & l2BitmapAllAlloc
	}
	return 0
}

// collapseFill makes the top define what needs names, where the top still
// leaves it to its backing file, with what it reads there now (through the
// old chain), and returns how many guest bytes it defined. Data goes the
// way of a guest write: a fresh cluster, its data written and, when it is
// not zeros, made durable before the L2 entry (by group commit, or the
// write journal). Whole subclusters of zeros become zero clusters or zero
// subclusters (version 3): no data and no sync, since the old chain reads
// zeros there too. A cluster with both is copied whole, zeros included,
// so that one L2 update describes it. Zero entries are never journaled
// (a replay accepts data mappings only), so a batch with any takes the
// lock as zeroing does (lockQuiescedRange), which first checkpoints the
// journal's entries of the same L2 slices.
func (img *Image) collapseFill(needs []clusterNeed) (int64, error) {
	if len(needs) == 0 {
		return 0, nil
	}
	first, last := needs[0].vi, needs[len(needs)-1].vi
	zeros := false
	for _, n := range needs {
		zeros = zeros || n.zero != 0
	}
	if zeros {
		img.lockQuiescedRange(first, last)
	} else {
		img.mu.Lock()
		img.waitAllocatable(first, last)
	}
	defer img.mu.Unlock()
	if img.closed {
		return 0, ErrClosed
	}
	if err := img.writable(); err != nil {
		return 0, err
	}
	if err := img.markDirty(); err != nil {
		return 0, err
	}
	if err := img.ensureReserved(int64(len(needs)) + last>>img.l2Bits - first>>img.l2Bits + 1); err != nil {
		return 0, err
	}
	var zb, db writeBatch
	var copied int64
	v3 := img.hdr.Version >= 3
	clusters := ceilDiv(img.size, img.cs)
	for _, n := range needs {
		if n.vi >= clusters {
			break // the top shrank meanwhile
		}
		m, err := img.lookup(n.vi)
		if err != nil {
			return 0, err
		}
		undef := img.undefinedSubs(m)
		data, zero := n.data&undef, n.zero&undef
		if data != 0 || !v3 {
			data, zero = data|zero, 0
		}
		switch {
		case zero != 0:
			if _, err := img.prepareL2(n.vi >> img.l2Bits); err != nil {
				return 0, err
			}
			e, bitmap := img.zeroEntry()
			if img.ext {
				e, bitmap = m.raw, m.bitmap|zero<<32
			}
			zb.l2 = append(zb.l2, l2Update{n.vi, e, bitmap})
			copied += int64(bits.OnesCount64(zero)) * img.scs
		case data != 0:
			s0, s1 := int64(bits.TrailingZeros64(data)), int64(63-bits.LeadingZeros64(data))
			in := s0 * img.scs
			content := make([]byte, (s1+1)*img.scs-in)
			if err := img.readCluster(content, n.vi<<img.cb+in, m); err != nil {
				return 0, err
			}
			if err := img.planWrite(&db, n.vi, in, content); err != nil {
				return 0, err
			}
			copied += int64(bits.OnesCount64(data)) * img.scs
		}
	}
	if len(zb.l2) > 0 {
		if err := img.commit(&zb); err != nil {
			return 0, err
		}
	}
	if len(db.l2) == 0 && len(db.data) == 0 {
		return copied, nil
	}
	if err := img.commitGrouped(&db, first, last); err != nil {
		return 0, err
	}
	return copied, nil
}
