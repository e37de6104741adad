package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"
)

// Internal snapshots (docs/interop/qcow2.rst, "Snapshots"), with QEMU's
// semantics: a snapshot is a copy of the active L1 table; every L2 table and
// data cluster reachable from an L1 table is counted once per L1 table that
// reaches it, and OFLAG_COPIED in the active tree is set exactly where the
// refcount is 1.
//
// Crash order (DESIGN.md rule 3), for every operation: the dirty bit is set
// (version 3, beginDirtyOp) before the first refcount or COPIED change and,
// without lazy refcounts, cleared after the last sync; refcount increments,
// the new tables (snapshot L1 copy, snapshot table, active L1) and the
// COPIED flags that must be cleared are written and synced before the
// header points at them; the header switch is one write inside the first
// sector; decrements happen only after the sync that made the unlinking
// durable (freeLater, or applyFrees right after that sync).

// ErrSnapshotNotFound: no snapshot has the given id or name.
var ErrSnapshotNotFound = errors.New("snapshot not found")

// ErrSnapshotExists: a snapshot with that name exists already.
var ErrSnapshotExists = errors.New("snapshot name already exists")

// SnapshotInfo describes one internal snapshot.
type SnapshotInfo struct {
	ID          string
	Name        string
	VMStateSize uint64
	// DiskSize is the virtual size when the snapshot was taken.
	DiskSize int64
	Date     time.Time
	// VMClock is the guest clock when the snapshot was taken.
	VMClock time.Duration
	// ICount is the instruction count (record/replay), -1 if not recorded.
	ICount int64
}

func (e *snapshotEntry) info() SnapshotInfo {
	return SnapshotInfo{
		ID:          e.ID,
		Name:        e.Name,
		VMStateSize: e.VMStateSize,
		DiskSize:    int64(e.DiskSize),
		Date:        time.Unix(int64(e.DateSec), int64(e.DateNsec)),
		VMClock:     time.Duration(e.VMClockNsec),
		ICount:      int64(e.ICount),
	}
}

// Snapshots lists the internal snapshots in table order.
func (img *Image) Snapshots() ([]SnapshotInfo, error) {
	img.mu.RLock()
	defer img.mu.RUnlock()
	if img.closed {
		return nil, ErrClosed
	}
	t, err := readSnapshotTable(img.f, img.hdr)
	if err != nil {
		return nil, err
	}
	out := make([]SnapshotInfo, len(t.Entries))
	for i := range t.Entries {
		out[i] = t.Entries[i].info()
	}
	return out, nil
}

// findSnapshot looks a snapshot up as QEMU does: by id first, then by name.
func findSnapshot(entries []snapshotEntry, idOrName string) int {
	for i := range entries {
		if entries[i].ID == idOrName {
			return i
		}
	}
	for i := range entries {
		if entries[i].Name == idOrName {
			return i
		}
	}
	return -1
}

// lookupSnapshot is findSnapshot with ErrSnapshotNotFound for a miss.
func lookupSnapshot(entries []snapshotEntry, idOrName string) (int, error) {
	if i := findSnapshot(entries, idOrName); i >= 0 {
		return i, nil
	}
	return -1, fmt.Errorf("%w: %q", ErrSnapshotNotFound, idOrName)
}

// snapshotOpStart takes the checks every modifying snapshot operation
// shares; the caller holds mu exclusively.
func (img *Image) snapshotOpStart() (*snapshotTable, error) {
	if img.closed {
		return nil, ErrClosed
	}
	if err := img.writableBase(); err != nil {
		return nil, err
	}
	// An undone Freeze may have left the bitmaps to mark in use: a
	// snapshot operation retries it as a write does (prepareWrite).
	if err := img.markInUseLocked(); err != nil {
		return nil, err
	}
	if err := img.writable(); err != nil {
		return nil, err
	}
	return readSnapshotTable(img.f, img.hdr)
}

// snapshotOpOn is snapshotOpStart for an operation on an existing snapshot:
// it also finds the snapshot's index in the table.
func (img *Image) snapshotOpOn(idOrName string) (*snapshotTable, int, error) {
	t, err := img.snapshotOpStart()
	if err != nil {
		return nil, -1, err
	}
	i, err := lookupSnapshot(t.Entries, idOrName)
	return t, i, err
}

// CreateSnapshot takes an internal snapshot of the active layer. On an
// image open for writes it waits for in-flight writes (it holds mu
// exclusively): every write that returned before the call is in the
// snapshot. Names must be unique (QEMU allows duplicates; this engine
// refuses them so that a name identifies one snapshot).
func (img *Image) CreateSnapshot(name string) (_ SnapshotInfo, err error) {
	img.lockQuiesced()
	defer img.mu.Unlock()
	t, err := img.snapshotOpStart()
	if err != nil {
		return SnapshotInfo{}, err
	}
	if name == "" {
		return SnapshotInfo{}, errorf(ErrInvalid, "a snapshot needs a name")
	}
	var maxID uint64
	for i := range t.Entries {
		if t.Entries[i].Name == name {
			return SnapshotInfo{}, fmt.Errorf("%w: %q", ErrSnapshotExists, name)
		}
		// QEMU's find_new_snapshot_id: strtoul of every id, max + 1.
		if v, err := strconv.ParseUint(leadingDigits(t.Entries[i].ID), 10, 64); err == nil {
			maxID = max(maxID, v)
		}
	}
	if len(t.Entries) >= maxSnapshots {
		return SnapshotInfo{}, errorf(ErrRange, "too many snapshots (at most %d)", maxSnapshots)
	}
	now := time.Now()
	e := snapshotEntry{
		L1Size:        uint32(len(img.l1)),
		ID:            strconv.FormatUint(maxID+1, 10),
		Name:          name,
		DateSec:       uint32(now.Unix()),
		DateNsec:      uint32(now.Nanosecond() / 1000 * 1000), // QEMU keeps microseconds
		DiskSize:      uint64(img.size),
		ExtraDataSize: snapshotExtraLen,
		ICount:        0, // what qemu-img snapshot -c records without record/replay
	}
	entries := append(slices.Clone(t.Entries), e)
	table, err := encodeSnapshotTable(entries)
	if err != nil {
		return SnapshotInfo{}, err
	}

	// Everything that can fail without changing the image comes first.
	copied := map[int64]bool{}
	refs, err := img.treeRefs(img.l1, copied)
	if err != nil {
		return SnapshotInfo{}, err
	}
	if err := img.checkRefDelta(refs, 1); err != nil {
		return SnapshotInfo{}, err
	}
	owned, err := img.beginDirtyOp()
	if err != nil {
		return SnapshotInfo{}, img.endDirtyOp(owned, err)
	}
	defer func() { err = img.endDirtyOp(owned, err) }()
	l1Bytes := int64(len(img.l1)) * 8
	var l1Start int64
	if l1Bytes > 0 {
		if l1Start, err = img.allocRunLive(ceilDiv(l1Bytes, img.cs)); err != nil {
			return SnapshotInfo{}, err
		}
		entries[len(entries)-1].L1Offset = uint64(l1Start * img.cs)
		if table, err = encodeSnapshotTable(entries); err != nil {
			return SnapshotInfo{}, err
		}
	}
	tStart, err := img.allocRunLive(ceilDiv(int64(len(table)), img.cs))
	if err != nil {
		return SnapshotInfo{}, err
	}

	if err := img.addRefs(refs); err != nil {
		return SnapshotInfo{}, err
	}
	// Every cluster of the active tree now has refcount >= 2: clear
	// COPIED, in the L2 slices that have it set.
	if err := img.fixCopied(copied); err != nil {
		return SnapshotInfo{}, err
	}
	if l1Bytes > 0 {
		buf := make([]byte, ceilDiv(l1Bytes, img.cs)*img.cs)
		putU64s(buf, img.l1)
		if err := img.writeNewMeta(buf, l1Start, metaSnapshots); err != nil {
			return SnapshotInfo{}, err
		}
	}
	if err := img.writeNewMeta(table, tStart, metaSnapshots); err != nil {
		return SnapshotInfo{}, err
	}
	if err := img.switchSnapshotTable(uint32(len(entries)), uint64(tStart*img.cs)); err != nil {
		return SnapshotInfo{}, err
	}
	img.freeTableLater(t)
	return e.info(), nil
}

func leadingDigits(s string) string {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	return s[:i]
}

// writeNewMeta writes buf to freshly allocated clusters starting at
// cluster start and records them as metadata of kind k.
func (img *Image) writeNewMeta(buf []byte, start int64, k metaKind) error {
	if err := img.checkDataRange(start*img.cs, int64(len(buf))); err != nil {
		return err
	}
	img.meta.addRange(start*img.cs, int64(len(buf)), img.cs, k)
	_, err := img.f.WriteAt(buf, start*img.cs)
	return err
}

// switchSnapshotTable makes everything written so far durable, then points
// the header at the new table (nb_snapshots and snapshots_offset in one
// 12-byte write) and makes that durable too.
func (img *Image) switchSnapshotTable(nb uint32, off uint64) error {
	if err := img.f.Sync(); err != nil {
		return err
	}
	if err := img.checkMetaWrite(hdrOffSnapshots, metaHeader); err != nil {
		return err
	}
	var hb [12]byte
	putU32(hb[:4], nb)
	binary.BigEndian.PutUint64(hb[4:], off)
	if _, err := img.f.WriteAt(hb[:], hdrOffSnapshots); err != nil {
		return err
	}
	if err := img.f.Sync(); err != nil {
		return err
	}
	img.hdr.NbSnapshots = nb
	img.hdr.SnapshotsOffset = off
	return nil
}

// tableClusters returns the clusters the snapshot table t occupies.
func (img *Image) tableClusters(t *snapshotTable) []int64 {
	if len(t.Entries) == 0 || t.Size <= 0 {
		return nil
	}
	var out []int64
	for c := int64(t.Offset) / img.cs; c < ceilDiv(int64(t.Offset)+t.Size, img.cs); c++ {
		out = append(out, c)
	}
	return out
}

func (img *Image) freeTableLater(t *snapshotTable) {
	for _, c := range img.tableClusters(t) {
		img.alloc.freeLater(c)
	}
}

// l1Clusters returns the clusters an L1 table of n entries at off occupies.
func (img *Image) l1Clusters(off uint64, n uint32) []int64 {
	if n == 0 || off == 0 {
		return nil
	}
	var out []int64
	for c := int64(off) / img.cs; c < ceilDiv(int64(off)+int64(n)*8, img.cs); c++ {
		out = append(out, c)
	}
	return out
}

// readSnapshotL1 reads and validates a snapshot's L1 table.
func (img *Image) readSnapshotL1(e *snapshotEntry) ([]uint64, error) {
	fsize, err := img.f.Size()
	if err != nil {
		return nil, err
	}
	if err := e.validate(img.cs, fsize); err != nil {
		return nil, fmt.Errorf("snapshot %q: %w", e.ID, err)
	}
	l1 := make([]uint64, e.L1Size)
	if err := img.readU64s(l1, int64(e.L1Offset)); err != nil {
		return nil, err
	}
	return l1, nil
}

// treeRefs lists every host cluster an L1 table references, with
// multiplicity, as QEMU counts them: each L2 table, each data cluster
// (also preallocated zero clusters) and, for compressed clusters, every
// host cluster their compressed range touches. The tables are read from
// the file (the caches are write-through), not through the L2 cache. A
// non-nil copied gets the file offset of every L2 slice with an entry
// that has OFLAG_COPIED set.
func (img *Image) treeRefs(l1 []uint64, copied map[int64]bool) ([]int64, error) {
	fsize, err := img.f.Size()
	if err != nil {
		return nil, err
	}
	var refs []int64
	buf := make([]byte, img.cs)
	for i, le := range l1 {
		l2off := int64(le & l1OffsetMask)
		if l2off == 0 {
			continue
		}
		if l2off%img.cs != 0 || l2off >= fsize {
			return nil, errorf(ErrInvalid, "L1 entry %d: L2 table offset %#x is invalid", i, l2off)
		}
		if k := img.meta.kind(l2off / img.cs); k != metaNone && k != metaL2 {
			return nil, img.corruptionOrInvalid("L1 entry %d points at the %s (%#x)", i, k, l2off)
		}
		refs = append(refs, l2off/img.cs)
		if err := readFull(img.f, buf, l2off); err != nil {
			return nil, err
		}
		for k := int64(0); k < img.l2Entries; k++ {
			e, _ := img.entryAt(buf, k)
			if e&oflagCompressed != 0 {
				off, n := img.compressedLocation(e)
				if off+n > maxHostOffset {
					return nil, errorf(ErrInvalid, "compressed cluster at %#x out of range", off)
				}
				for c := off / img.cs; c < ceilDiv(off+n, img.cs); c++ {
					if err := img.refIsData(c); err != nil {
						return nil, err
					}
					refs = append(refs, c)
				}
				continue
			}
			host := int64(e & l2OffsetMask)
			if host == 0 {
				continue
			}
			if host%img.cs != 0 {
				return nil, errorf(ErrInvalid, "L2 table at %#x maps a cluster to unaligned host offset %#x", l2off, host)
			}
			if err := img.refIsData(host / img.cs); err != nil {
				return nil, err
			}
			refs = append(refs, host/img.cs)
			if copied != nil && e&oflagCopied != 0 {
				copied[l2off+(k-k%img.sliceEntries)*img.l2es] = true
			}
		}
	}
	return refs, nil
}

// refIsData verifies that a cluster an L2 entry maps is not metadata.
func (img *Image) refIsData(c int64) error {
	if k := img.meta.kind(c); k != metaNone {
		return img.corruptionOrInvalid("a guest data cluster at %#x is the %s", c*img.cs, k)
	}
	return nil
}

// refCounts folds a reference list into per-cluster counts, sorted.
func refCounts(refs []int64) ([]int64, map[int64]uint64) {
	m := make(map[int64]uint64)
	for _, c := range refs {
		m[c]++
	}
	keys := make([]int64, 0, len(m))
	for c := range m {
		keys = append(keys, c)
	}
	slices.Sort(keys)
	return keys, m
}

// checkRefDelta verifies that adding sign*count to every referenced
// cluster's refcount is possible: the cluster has a refcount block, is
// not free, and the result fits the refcount width. It changes nothing.
func (img *Image) checkRefDelta(refs []int64, sign int) error {
	keys, m := refCounts(refs)
	limit := refcountMax(img.refOrder)
	for _, c := range keys {
		blk, _, err := img.refBlock(img.rt, c/img.refPerBlk)
		if err != nil {
			return err
		}
		if blk == nil {
			return errorf(ErrInvalid, "cluster %#x is referenced but has no refcount block", c*img.cs)
		}
		rc := getRefcount(blk, uint64(c%img.refPerBlk), img.refOrder)
		if rc == 0 {
			return errorf(ErrInvalid, "cluster %#x is referenced but its refcount is 0 (run `img check -r all`)", c*img.cs)
		}
		if sign > 0 && (m[c] > limit || rc > limit-m[c]) {
			return fmt.Errorf("%w: the refcount of cluster %#x would exceed %d, the most %d-bit refcounts hold (recreate the image with a larger refcount_bits to use snapshots)",
				ErrUnsupported, c*img.cs, limit, 1<<img.refOrder)
		}
	}
	return nil
}

// addRefs increments the refcount of every referenced cluster (with
// multiplicity), one write per touched refcount block. checkRefDelta must
// have accepted refs.
func (img *Image) addRefs(refs []int64) error {
	keys, m := refCounts(refs)
	width := int64(1) << img.refOrder
	for i := 0; i < len(keys); {
		bi := keys[i] / img.refPerBlk
		blk, off, err := img.refBlock(img.rt, bi)
		if err != nil {
			return err
		}
		if blk == nil {
			return errorf(ErrInvalid, "cluster %#x has no refcount block", keys[i]*img.cs)
		}
		if err := img.checkMetaWrite(off, metaRefBlock); err != nil {
			return err
		}
		lo, hi := int64(-1), int64(0)
		for ; i < len(keys) && keys[i]/img.refPerBlk == bi; i++ {
			k := keys[i] % img.refPerBlk
			rc := getRefcount(blk, uint64(k), img.refOrder)
			setRefcount(blk, uint64(k), img.refOrder, rc+m[keys[i]])
			if lo < 0 {
				lo = k
			}
			hi = k + 1
		}
		from, to := lo*width/8, ceilDiv(hi*width, 8)
		if _, err := img.f.WriteAt(blk[from:to], off+from); err != nil {
			img.rbc.drop(off, img.cs)
			return err
		}
	}
	return nil
}

// fixCopied makes OFLAG_COPIED in the active L1 table and its L2 tables
// say exactly "refcount is 1", as QEMU's check demands, writing only the
// entries that change. Clearing is always safe; setting is only correct
// once the decrements that brought a refcount to 1 are durable.
func (img *Image) fixCopied(only map[int64]bool) error {
	l1off := int64(img.hdr.L1TableOffset)
	for i, le := range img.l1 {
		l2off := int64(le & l1OffsetMask)
		if l2off == 0 {
			continue
		}
		want, err := img.copiedFlag(le, l2off)
		if err != nil {
			return err
		}
		if want != le {
			entryOff := l1off + int64(i)*8
			if err := img.checkMetaWrite(entryOff, metaL1); err != nil {
				return err
			}
			if err := img.writeU64(entryOff, want); err != nil {
				return err
			}
			img.l1[i] = want
		}
		img.meta.add(l2off/img.cs, metaL2)
		if err := img.fixCopiedL2(int64(i), l2off, only); err != nil {
			return err
		}
	}
	return nil
}

// copiedFlag returns entry with OFLAG_COPIED set exactly when the cluster
// at host has refcount 1.
func (img *Image) copiedFlag(entry uint64, host int64) (uint64, error) {
	rc, err := img.refcount(host / img.cs)
	if err != nil {
		return 0, err
	}
	want := entry &^ oflagCopied
	if rc == 1 {
		want |= oflagCopied
	}
	return want, nil
}

// fixCopiedL2 fixes the COPIED flags of the L2 table of L1 entry l1i:
// all its slices, or those in only when only is not nil.
func (img *Image) fixCopiedL2(l1i, l2off int64, only map[int64]bool) error {
	first := l1i * img.l2Entries
	for s := int64(0); s < img.l2Entries; s += img.sliceEntries {
		if only != nil && !only[l2off+s*img.l2es] {
			continue
		}
		buf, sliceOff, err := img.l2Slice(l2off, first+s)
		if err != nil {
			return err
		}
		lo, hi := int64(-1), int64(0)
		var out []byte
		for k := int64(0); k < img.sliceEntries; k++ {
			e, bitmap := img.entryAt(buf, k)
			host := int64(e & l2OffsetMask)
			if e&oflagCompressed != 0 || host == 0 {
				continue
			}
			want, err := img.copiedFlag(e, host)
			if err != nil {
				return err
			}
			if want == e {
				continue
			}
			if lo < 0 {
				lo = k
				out = slices.Clone(buf)
			}
			img.putEntry(out, k, want, bitmap)
			hi = k + 1
		}
		if lo < 0 {
			continue
		}
		if err := img.checkMetaWrite(sliceOff, metaL2); err != nil {
			return err
		}
		es := img.l2es
		if _, err := img.f.WriteAt(out[lo*es:hi*es], sliceOff+lo*es); err != nil {
			img.l2c.drop(sliceOff, int64(len(buf)))
			return err
		}
		copy(buf[lo*es:hi*es], out[lo*es:hi*es]) // write-through: the file first
	}
	return nil
}

// flushLocked is Flush under the held lock: sync, then apply the deferred
// frees that sync made safe, then sync again.
func (img *Image) flushLocked(extra []int64) error {
	pend := append(img.alloc.pending, extra...)
	img.alloc.pending = nil
	if err := img.f.Sync(); err != nil {
		img.alloc.pending = append(pend, img.alloc.pending...)
		return err
	}
	if len(pend) == 0 {
		return nil
	}
	if err := img.applyFrees(pend); err != nil {
		return err
	}
	return img.f.Sync()
}

// ApplySnapshot reverts the active layer to a snapshot (qemu-img snapshot
// -a): the active L1 table becomes a copy of the snapshot's and the virtual
// size becomes the snapshot's disk size. The snapshot is kept.
func (img *Image) ApplySnapshot(idOrName string) (err error) {
	img.lockQuiesced()
	defer img.mu.Unlock()
	t, i, err := img.snapshotOpOn(idOrName)
	if err != nil {
		return err
	}
	e := &t.Entries[i]
	if e.DiskSize > uint64(maxImageSize) {
		return errorf(ErrInvalid, "snapshot %q: disk size %d too large", e.ID, e.DiskSize)
	}
	snapL1, err := img.readSnapshotL1(e)
	if err != nil {
		return err
	}
	newSize := int64(e.DiskSize)
	if err := img.checkBitmapsResize(newSize); err != nil {
		return err
	}
	n := max(int64(len(snapL1)), ceilDiv(newSize, img.cs*img.l2Entries))
	if n*8 > maxL1Bytes {
		return errorf(ErrRange, "the L1 table would need %d entries", n)
	}
	newL1 := make([]uint64, n)
	for j, le := range snapL1 {
		newL1[j] = le &^ oflagCopied // every cluster becomes shared
	}
	snapRefs, err := img.treeRefs(newL1, nil)
	if err != nil {
		return err
	}
	if err := img.checkRefDelta(snapRefs, 1); err != nil {
		return err
	}
	oldRefs, err := img.treeRefs(img.l1, nil)
	if err != nil {
		return err
	}
	owned, err := img.beginDirtyOp()
	if err != nil {
		return img.endDirtyOp(owned, err)
	}
	defer func() { err = img.endDirtyOp(owned, err) }()
	var start int64
	ncl := ceilDiv(n*8, img.cs)
	if n > 0 {
		if start, err = img.allocRunLive(ncl); err != nil {
			return err
		}
	}
	if err := img.addRefs(snapRefs); err != nil {
		return err
	}
	// The snapshot's L2 tables become active ones: after the increments
	// all their clusters are shared, so no entry may keep COPIED.
	for j, le := range newL1 {
		l2off := int64(le & l1OffsetMask)
		if l2off == 0 {
			continue
		}
		img.meta.add(l2off/img.cs, metaL2)
		if err := img.clearCopiedL2(int64(j), l2off); err != nil {
			return err
		}
	}
	if n > 0 {
		buf := make([]byte, ncl*img.cs)
		putU64s(buf, newL1)
		if err := img.writeNewMeta(buf, start, metaL1); err != nil {
			return err
		}
	}
	if err := img.f.Sync(); err != nil {
		return err
	}
	// size (8), crypt_method (4), l1_size (4), l1_table_offset (8): one
	// 24-byte write inside the first sector switches all three.
	if err := img.checkMetaWrite(hdrOffSize, metaHeader); err != nil {
		return err
	}
	var hb [24]byte
	binary.BigEndian.PutUint64(hb[0:], uint64(newSize))
	putU32(hb[8:], img.hdr.CryptMethod)
	putU32(hb[12:], uint32(n))
	binary.BigEndian.PutUint64(hb[16:], uint64(start*img.cs))
	if _, err := img.f.WriteAt(hb[:], hdrOffSize); err != nil {
		return err
	}
	if err := img.f.Sync(); err != nil {
		return err
	}
	oldL1Clusters := img.l1Clusters(img.hdr.L1TableOffset, img.hdr.L1Size)
	for _, le := range img.l1 {
		if l2off := int64(le & l1OffsetMask); l2off != 0 {
			img.l2c.drop(l2off, img.cs)
		}
	}
	img.l1 = newL1
	img.size = newSize
	img.hdr.Size = uint64(newSize)
	img.hdr.L1Size = uint32(n)
	img.hdr.L1TableOffset = uint64(start * img.cs)
	img.bitmapsReverted()
	// The old active tree is unlinked durably: release it now, so that
	// the image checks clean without waiting for the next Flush.
	return img.flushLocked(append(oldRefs, oldL1Clusters...))
}

// clearCopiedL2 clears OFLAG_COPIED in every entry of an L2 table.
func (img *Image) clearCopiedL2(l1i, l2off int64) error {
	first := l1i * img.l2Entries
	for s := int64(0); s < img.l2Entries; s += img.sliceEntries {
		buf, sliceOff, err := img.l2Slice(l2off, first+s)
		if err != nil {
			return err
		}
		out := slices.Clone(buf)
		changed := false
		for k := int64(0); k < img.sliceEntries; k++ {
			e, bitmap := img.entryAt(out, k)
			if e&oflagCopied != 0 {
				img.putEntry(out, k, e&^oflagCopied, bitmap)
				changed = true
			}
		}
		if !changed {
			continue
		}
		if err := img.checkMetaWrite(sliceOff, metaL2); err != nil {
			return err
		}
		if _, err := img.f.WriteAt(out, sliceOff); err != nil {
			img.l2c.drop(sliceOff, int64(len(buf)))
			return err
		}
		copy(buf, out)
	}
	return nil
}

// DeleteSnapshot removes a snapshot (found by id, then by name) and
// releases the clusters only it referenced.
func (img *Image) DeleteSnapshot(idOrName string) (err error) {
	img.lockQuiesced()
	defer img.mu.Unlock()
	t, i, err := img.snapshotOpOn(idOrName)
	if err != nil {
		return err
	}
	e := t.Entries[i]
	snapL1, err := img.readSnapshotL1(&e)
	if err != nil {
		return err
	}
	refs, err := img.treeRefs(snapL1, nil)
	if err != nil {
		return err
	}
	if err := img.checkRefDelta(refs, -1); err != nil {
		return err
	}
	entries := slices.Delete(slices.Clone(t.Entries), i, i+1)
	var newOff uint64
	var table []byte
	if len(entries) > 0 {
		if table, err = encodeSnapshotTable(entries); err != nil {
			return err
		}
	}
	owned, err := img.beginDirtyOp()
	if err != nil {
		return img.endDirtyOp(owned, err)
	}
	defer func() { err = img.endDirtyOp(owned, err) }()
	if len(entries) > 0 {
		start, err := img.allocRunLive(ceilDiv(int64(len(table)), img.cs))
		if err != nil {
			return err
		}
		if err := img.writeNewMeta(table, start, metaSnapshots); err != nil {
			return err
		}
		newOff = uint64(start * img.cs)
	}
	if err := img.switchSnapshotTable(uint32(len(entries)), newOff); err != nil {
		return err
	}
	// The snapshot is unlinked durably (switchSnapshotTable synced):
	// release its tree, its L1 table and the old table at once.
	for _, le := range snapL1 {
		if l2off := int64(le & l1OffsetMask); l2off != 0 {
			img.l2c.drop(l2off, img.cs)
		}
	}
	frees := append(refs, img.l1Clusters(e.L1Offset, e.L1Size)...)
	frees = append(frees, img.tableClusters(t)...)
	if err := img.flushLocked(frees); err != nil {
		return err
	}
	// Clusters only the active layer references now may be written in
	// place again; their decrements are durable.
	if err := img.fixCopied(nil); err != nil {
		return err
	}
	return img.f.Sync()
}

// SnapshotView reads an internal snapshot: a read-only disk of the
// snapshot's size whose unallocated clusters come from the backing file.
// It stays valid while the image is open and the snapshot exists; once the
// snapshot is deleted reads fail with ErrSnapshotNotFound.
type SnapshotView struct {
	img  *Image
	info SnapshotInfo
	l1   []uint64
	l1At uint64

	mu     sync.Mutex
	tblOff uint64 // snapshot table the view last saw its snapshot in
	tblNb  uint32
}

// OpenSnapshot returns a read-only view of a snapshot (by id, then name).
func (img *Image) OpenSnapshot(idOrName string) (*SnapshotView, error) {
	img.mu.RLock()
	defer img.mu.RUnlock()
	if img.closed {
		return nil, ErrClosed
	}
	t, err := readSnapshotTable(img.f, img.hdr)
	if err != nil {
		return nil, err
	}
	i, err := lookupSnapshot(t.Entries, idOrName)
	if err != nil {
		return nil, err
	}
	e := &t.Entries[i]
	if e.DiskSize > uint64(maxImageSize) {
		return nil, errorf(ErrInvalid, "snapshot %q: disk size %d too large", e.ID, e.DiskSize)
	}
	l1, err := img.readSnapshotL1(e)
	if err != nil {
		return nil, err
	}
	return &SnapshotView{img: img, info: e.info(), l1: l1, l1At: e.L1Offset,
		tblOff: img.hdr.SnapshotsOffset, tblNb: img.hdr.NbSnapshots}, nil
}

// Info describes the snapshot.
func (v *SnapshotView) Info() SnapshotInfo { return v.info }

// Size returns the snapshot's virtual size.
func (v *SnapshotView) Size() int64 { return v.info.DiskSize }

// stillThere verifies, under the image's read lock, that the snapshot was
// not deleted since the view was opened.
func (v *SnapshotView) stillThere() error {
	img := v.img
	if img.closed {
		return ErrClosed
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if img.hdr.SnapshotsOffset == v.tblOff && img.hdr.NbSnapshots == v.tblNb {
		return nil
	}
	t, err := readSnapshotTable(img.f, img.hdr)
	if err != nil {
		return err
	}
	for _, e := range t.Entries {
		if e.ID == v.info.ID && e.L1Offset == v.l1At {
			v.tblOff, v.tblNb = img.hdr.SnapshotsOffset, img.hdr.NbSnapshots
			return nil
		}
	}
	return fmt.Errorf("%w: %q was deleted", ErrSnapshotNotFound, v.info.ID)
}

// ReadAt reads the snapshot's guest bytes [off, off+len(p)).
func (v *SnapshotView) ReadAt(p []byte, off int64) (int, error) {
	img := v.img
	img.mu.RLock()
	defer img.mu.RUnlock()
	if err := v.stillThere(); err != nil {
		return 0, err
	}
	n := int64(len(p))
	if off < 0 || off > v.info.DiskSize || n > v.info.DiskSize-off {
		return 0, fmt.Errorf("%w: [%d, +%d) is outside the %d-byte snapshot", ErrRange, off, n, v.info.DiskSize)
	}
	for pos := off; pos < off+n; {
		vi := pos / img.cs
		in := pos % img.cs
		l := min(img.cs-in, off+n-pos)
		dst := p[pos-off : pos-off+l]
		m, err := v.lookup(vi)
		if err == nil {
			err = img.readCluster(dst, pos, m)
		}
		if err != nil {
			return 0, err
		}
		pos += l
	}
	return len(p), nil
}

func (v *SnapshotView) lookup(vi int64) (mapping, error) {
	img := v.img
	l1i := vi / img.l2Entries
	if l1i >= int64(len(v.l1)) {
		return mapping{}, nil
	}
	l2off := int64(v.l1[l1i] & l1OffsetMask)
	if l2off == 0 {
		return mapping{}, nil
	}
	if l2off%img.cs != 0 {
		return mapping{}, errorf(ErrInvalid, "snapshot %q: L2 table offset %#x is not cluster aligned", v.info.ID, l2off)
	}
	buf, _, err := img.l2Slice(l2off, vi)
	if err != nil {
		return mapping{}, err
	}
	e, bitmap := img.entryAt(buf, vi%img.sliceEntries)
	return img.decodeL2(vi, e, bitmap)
}
