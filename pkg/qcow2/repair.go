package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Repairs that need new clusters. QEMU's rebuild_refcount_structure fills
// the first free clusters it finds; this implementation instead appends the
// new refcount blocks and table (and a rewritten snapshot table) after the
// end of the file, so that nothing that is still referenced, or that an
// older header still points to, is ever overwritten, and a crash at any
// point leaves the previous structure intact until the header names the
// new one. The old refcount structure becomes free space.

// rebuildRefcounts is called by Open, with no other state loaded, on an
// image whose dirty bit is set (lazy refcounts after a crash). It brings
// the refcounts in line with what the image references, fixes OFLAG_COPIED
// in the active tables and clears the dirty bit, updating h to match.
//
// Ordering: the new refcount blocks and table are written to fresh clusters
// at the end of the file and synced; then the header is pointed at them and
// synced; only then is the dirty bit cleared (and synced). A crash anywhere
// leaves a dirty image that a later call repairs.
//
// If the refcounts already match, only the dirty bit is cleared. If the
// image has damage a refcount rebuild cannot fix (bad table offsets,
// reserved bits, ...), nothing is written and the error wraps ErrCorrupt.
// lazyGrowLimit bounds how far past the end of the file a dirty image may
// reference clusters: one reservation batch (maxReserveBytes) plus the
// refcount blocks that describe it.
const lazyGrowLimit = 2 * maxReserveBytes

func rebuildRefcounts(run longRun, f File, h *Header) error {
	res := &CheckResult{}
	c := &checker{f: f, h: h, res: res, writable: true, run: run}
	if err := c.open(); err != nil {
		return err
	}
	t, err := loadSnapshotTable(f, h.SnapshotsOffset, h.NbSnapshots, c.cs, c.virtualSize, false)
	if err != nil {
		return fmt.Errorf("reading the snapshot table: %w", err)
	}
	c.snaps, c.snapOff, c.snapSize = t.Entries, t.Offset, t.Size
	c.nbClusters = ceilClusters(c.fileSize, c.cs)
	if c.nbClusters > maxCheckClusters {
		return fmt.Errorf("%w: file too large (%d clusters)", ErrInvalid, c.nbClusters)
	}

	// Is anything wrong with the current refcounts?
	scratch := &CheckResult{}
	c.res = scratch
	var cnt checkCounts
	rebuild := false
	c.imrt = newRefArray(c.order, c.cs)
	c.growLimit = lazyGrowLimit
	if err := c.calculateRefcounts(&cnt, 0, &rebuild, false); err != nil {
		return fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if c.grownEnd > c.fileSize {
		// Restore the file size the crash lost; the clusters read as zeros.
		size := ceilClusters(c.grownEnd, c.cs) * c.cs
		if err := f.Truncate(size); err != nil {
			return err
		}
		if err := f.Sync(); err != nil {
			return err
		}
		c.fileSize = size
		c.nbClusters = max(c.nbClusters, ceilClusters(size, c.cs))
		rebuild = true
	}
	var highest int64
	c.compareRefcounts(&cnt, 0, &rebuild, &highest)
	if c.stopped != nil {
		return c.stopped
	}
	c.res = res
	if cnt != (checkCounts{}) || rebuild {
		// Structural damage outside the refcounts?
		refs, rc, msgs := c.referenceCounts()
		if rc.corruptions > 0 || rc.checkErrors > 0 {
			return fmt.Errorf("%w: cannot rebuild refcounts: %s", ErrCorrupt, firstOr(msgs, "metadata damaged"))
		}
		if err := c.installRefcounts(refs, nil); err != nil {
			return err
		}
	}
	var oc checkCounts
	c.res = scratch
	err = c.checkOflagCopied(&oc, fixLeaks|fixErrors)
	c.res = res
	if err != nil {
		return err
	}
	if oc.corruptions > 0 || oc.checkErrors > 0 {
		return fmt.Errorf("%w: could not fix OFLAG_COPIED: %s", ErrCorrupt, firstOr(scratch.Messages, "metadata damaged"))
	}
	if err := c.f.Sync(); err != nil {
		return err
	}
	if h.IncompatibleFeatures&incompatDirty != 0 {
		if err := c.writeIncompat(h.IncompatibleFeatures &^ incompatDirty); err != nil {
			return err
		}
	}
	return nil
}

func firstOr(msgs []string, def string) string {
	if len(msgs) > 0 {
		return msgs[0]
	}
	return def
}

// referenceCounts counts every reference except those of the refcount
// structure itself, without printing; it returns the counts, the findings
// and their messages. Checker state used by the caller is preserved.
func (c *checker) referenceCounts() (*refArray, checkCounts, []string) {
	savedRes, savedImrt, savedFrag, savedNb := c.res, c.imrt, c.frag, c.nbClusters
	defer func() { c.res, c.imrt, c.frag, c.nbClusters = savedRes, savedImrt, savedFrag, savedNb }()
	scratch := &CheckResult{}
	c.res = scratch
	c.imrt = newRefArray(c.order, c.cs)
	c.nbClusters = ceilClusters(c.fileSize, c.cs)
	var cnt checkCounts
	rebuild := false
	if err := c.calculateRefcounts(&cnt, 0, &rebuild, true); err != nil {
		cnt.checkErrors++
		scratch.logf("%v", err)
	}
	return c.imrt, cnt, scratch.Messages
}

// metadataEndCluster is the first cluster past every table the header
// names (active L1, refcount table, snapshot table and snapshot L1 tables),
// even tables that lie past the end of the file: new structures placed at
// the end must never land on them (QEMU's overlap check refuses that).
func (c *checker) metadataEndCluster() int64 {
	end := int64(0)
	region := func(off uint64, n int64) {
		if off <= uint64(maxHostOffset) && n >= 0 && n <= maxHostOffset {
			end = max(end, ceilClusters(int64(off)+n, c.cs))
		}
	}
	region(c.l1Off, int64(c.l1Size)*8)
	region(c.rtOff, int64(c.rtClusters)*c.cs)
	region(c.snapOff, c.snapSize)
	for _, s := range c.snaps {
		region(s.L1Offset, int64(s.L1Size)*8)
	}
	return end
}

// rebuildRefcountStructure replaces the refcount structure by one built
// from the references (the -r all path of qcow2_check_refcounts).
func (c *checker) rebuildRefcountStructure() error {
	refs, _, _ := c.referenceCounts()
	return c.installRefcounts(refs, nil)
}

// newSnapshotPointer, when given to installRefcounts, is written into the
// header together with the new refcount table.
type newSnapshotPointer struct {
	n   uint32
	off uint64
}

// installRefcounts writes a refcount structure for refs after the end of
// the file, syncs, and points the header at it (with snap, also at a new
// snapshot table, in the same write), and syncs again.
func (c *checker) installRefcounts(refs *refArray, snap *newSnapshotPointer) error {
	start := max(ceilClusters(c.fileSize, c.cs), c.nbClusters, c.metadataEndCluster())
	rt, rtClusters, err := writeRefcountBlocks(c.f, c.cbits, c.order, refs, start)
	if err != nil {
		return err
	}
	rtOff := uint64(start+int64(len(rt.blocks))) << c.cbits
	be := binary.BigEndian
	tbl := make([]byte, int64(rtClusters)*c.cs)
	for i, off := range rt.entries {
		be.PutUint64(tbl[i*8:], off)
	}
	if _, err := c.f.WriteAt(tbl, int64(rtOff)); err != nil {
		return err
	}
	if err := c.f.Sync(); err != nil {
		return err
	}
	hdr := make([]byte, 12, 24)
	be.PutUint64(hdr[0:], rtOff)
	be.PutUint32(hdr[8:], rtClusters)
	if snap != nil {
		hdr = hdr[:24]
		be.PutUint32(hdr[12:], snap.n)
		be.PutUint64(hdr[16:], snap.off)
	}
	if _, err := c.f.WriteAt(hdr, hdrOffRefcountTable); err != nil {
		return err
	}
	if err := c.f.Sync(); err != nil {
		return err
	}
	c.rtOff, c.rtClusters = rtOff, rtClusters
	c.rt = rt.entries
	c.dropRefBlockCache()
	c.h.RefcountTableOffset, c.h.RefcountTableClusters = rtOff, rtClusters
	if snap != nil {
		c.h.NbSnapshots, c.h.SnapshotsOffset = snap.n, snap.off
	}
	return c.refreshSize()
}

// newRefcountTable is the layout writeRefcountBlocks chose.
type newRefcountTable struct {
	entries []uint64 // the refcount table: refcount block offsets
	blocks  []int64  // refcount block indices, in the order written
}

// writeRefcountBlocks lays out, at cluster start and after, the refcount
// blocks needed to describe refs plus the new blocks and table themselves,
// followed by room for the table; records the new clusters in refs and
// writes the blocks (not the table). It returns the table contents and its
// size in clusters; the table goes at cluster start+len(blocks).
func writeRefcountBlocks(f File, cbits, order uint32, refs *refArray, start int64) (*newRefcountTable, uint32, error) {
	cs := int64(1) << cbits
	rbBits := cbits + 3 - order
	perBlock := int64(1) << rbBits
	// Refcount blocks with references in them.
	var base []int64
	nChunks := int64(len(refs.chunks))
	lastBlock := (nChunks<<refs.chunkShift - 1) >> rbBits
	for ri := int64(0); ri <= lastBlock && nChunks > 0; ri++ {
		if refs.block(ri, cs) != nil {
			base = append(base, ri)
		}
	}
	var nRB, nRT int64
	var needed []int64
	var rtEntries int64
	for {
		needed = needed[:0]
		needed = append(needed, base...)
		if n := nRB + nRT; n > 0 {
			first, last := start/perBlock, (start+n-1)/perBlock
			for ri := first; ri <= last; ri++ {
				needed = insertSorted(needed, ri)
			}
		}
		maxRI := int64(0)
		if len(needed) > 0 {
			maxRI = needed[len(needed)-1]
		}
		rtEntries = ((maxRI+1)*8 + cs - 1) / cs * cs / 8
		if rtEntries*8 > maxRefcountTableBytes {
			return nil, 0, fmt.Errorf("%w: refcount table would exceed %d bytes", ErrInvalid, maxRefcountTableBytes)
		}
		newRB, newRT := int64(len(needed)), rtEntries*8/cs
		if newRB == nRB && newRT == nRT {
			break
		}
		nRB, nRT = newRB, newRT
	}
	for k := start; k < start+nRB+nRT; k++ {
		refs.set(k, 1)
	}
	t := &newRefcountTable{entries: make([]uint64, rtEntries), blocks: needed}
	zero := make([]byte, cs)
	for i, ri := range needed {
		off := (start + int64(i)) << cbits
		t.entries[ri] = uint64(off)
		b := refs.block(ri, cs)
		if b == nil {
			b = zero
		}
		if _, err := f.WriteAt(b, off); err != nil {
			return nil, 0, err
		}
	}
	return t, uint32(nRT), nil
}

func insertSorted(s []int64, v int64) []int64 {
	lo, hi := 0, len(s)
	for lo < hi {
		m := (lo + hi) / 2
		if s[m] < v {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo < len(s) && s[lo] == v {
		return s
	}
	s = append(s, 0)
	copy(s[lo+1:], s[lo:])
	s[lo] = v
	return s
}

// checkFixSnapshotTable is qcow2_check_fix_snapshot_table: with -r all,
// snapshot table corruptions are fixed by writing the table anew.
func (c *checker) checkFixSnapshotTable(cnt *checkCounts, fix fixFlags) error {
	if cnt.corruptions == 0 || fix&fixErrors == 0 {
		return nil
	}
	if err := c.rewriteSnapshotTable(); err != nil {
		cnt.checkErrors++
		c.logf("ERROR failed to update snapshot table: %v", err)
		return err
	}
	cnt.corruptionsFixed += cnt.corruptions
	cnt.corruptions = 0
	return nil
}

// rewriteSnapshotTable writes the (repaired) snapshot table after the end
// of the file and rebuilds the refcounts so that they count it instead of
// the old table; the header switches to both in one write.
func (c *checker) rewriteSnapshotTable() error {
	buf, err := encodeSnapshotTable(c.snaps)
	if err != nil {
		return err
	}
	start := max(ceilClusters(c.fileSize, c.cs), c.nbClusters, c.metadataEndCluster())
	off := uint64(start) << c.cbits
	padded := make([]byte, (int64(len(buf))+c.cs-1)/c.cs*c.cs)
	copy(padded, buf)
	if len(padded) > 0 {
		if _, err := c.f.WriteAt(padded, int64(off)); err != nil {
			return err
		}
	} else {
		off = 0
	}
	if err := c.refreshSize(); err != nil {
		return err
	}
	oldOff, oldSize := c.snapOff, c.snapSize
	c.snapOff, c.snapSize = off, int64(len(buf))
	refs, _, _ := c.referenceCounts()
	if err := c.installRefcounts(refs, &newSnapshotPointer{n: uint32(len(c.snaps)), off: off}); err != nil {
		c.snapOff, c.snapSize = oldOff, oldSize
		return err
	}
	for i := range c.snaps {
		c.snaps[i].ExtraDataSize = max(c.snaps[i].ExtraDataSize, snapshotExtraLen)
	}
	return nil
}

// markCleanAndConsistent clears the dirty and corrupt bits after a repair
// that left nothing to fix (qcow2_mark_clean, qcow2_mark_consistent).
func (c *checker) markCleanAndConsistent() error {
	if c.h.Version < 3 {
		return nil
	}
	bits := c.h.IncompatibleFeatures &^ (incompatDirty | incompatCorrupt)
	if bits == c.h.IncompatibleFeatures {
		return nil
	}
	if err := c.f.Sync(); err != nil {
		return err
	}
	return c.writeIncompat(bits)
}

// writeIncompat stores the incompatible feature bits and syncs.
func (c *checker) writeIncompat(bits uint64) error {
	if c.h.Version < 3 {
		return errors.New("version 2 images have no feature bits")
	}
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], bits)
	if _, err := c.f.WriteAt(b[:], hdrOffIncompat); err != nil {
		return err
	}
	if err := c.f.Sync(); err != nil {
		return err
	}
	c.h.IncompatibleFeatures = bits
	return nil
}
