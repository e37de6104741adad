package qcow2

import (
	"cmp"
	"fmt"
	"slices"
)

// Snapshots never share L1 tables: QEMU writes a copy of the active L1
// table for each snapshot, and so does this engine. An image whose
// snapshot L1 tables overlap is refused at open and reported by check
// instead of walked, since walking one shared 32 MiB table for each of
// 65536 snapshots is 2 TiB of reading (and its clusters would need more
// references than a 16-bit refcount holds).

// snapL1Run is the clusters a snapshot's L1 table covers; idx is the
// snapshot's index in the table.
type snapL1Run struct {
	clusterSpan
	idx int
}

// snapshotL1Run returns the run of e's L1 table (entry idx of the table);
// ok is false for an empty table or one whose offset is out of range.
func snapshotL1Run(e *snapshotEntry, idx int, cs int64) (r snapL1Run, ok bool) {
	if e.L1Size == 0 || e.L1Offset > uint64(maxHostOffset) {
		return r, false
	}
	off := int64(e.L1Offset)
	return snapL1Run{clusterSpan{off / cs, ceilDiv(off+int64(e.L1Size)*8, cs)}, idx}, true
}

// forEachSnapshotL1Overlap sorts runs by start and calls fn(a, b) for each
// run b that overlaps a run a starting no later (a and b are table
// indices), until fn returns false.
func forEachSnapshotL1Overlap(runs []snapL1Run, fn func(a, b int) bool) {
	slices.SortFunc(runs, func(x, y snapL1Run) int {
		return cmp.Or(cmp.Compare(x.start, y.start), cmp.Compare(x.idx, y.idx))
	})
	reach, owner := int64(-1), -1 // the furthest end so far, and whose
	for _, r := range runs {
		if r.start < reach && !fn(owner, r.idx) {
			return
		}
		if r.end > reach {
			reach, owner = r.end, r.idx
		}
	}
}

// snapshotMetaRuns scans the snapshot table named by h for open and
// returns the clusters of the table and of the snapshots' L1 tables as
// runs. It keeps no entry, and refuses L1 tables that overlap.
func snapshotMetaRuns(f File, h *Header) (clusterSpans, error) {
	cs := h.clusterSize()
	runs := make([]snapL1Run, 0, h.NbSnapshots) // NbSnapshots <= maxSnapshots
	t, err := scanSnapshotTableStrict(f, h, func(i int, e *snapshotEntry) error {
		if r, ok := snapshotL1Run(e, i, cs); ok {
			runs = append(runs, r)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var shared error
	forEachSnapshotL1Overlap(runs, func(a, b int) bool {
		shared = fmt.Errorf("%w: snapshot table entries %d and %d have overlapping L1 tables; snapshots never share one", ErrInvalid, a, b)
		return false
	})
	if shared != nil {
		return nil, shared
	}
	all := make([]clusterSpan, 0, len(runs)+1)
	all = append(all, clusterSpan{int64(t.Offset) / cs, ceilDiv(int64(t.Offset)+t.Size, cs)})
	for _, r := range runs {
		all = append(all, r.clusterSpan)
	}
	return newClusterSpans(all), nil
}

// refuseSharedSnapshotL1s reports each snapshot whose L1 table overlaps
// another snapshot's as a corruption and then abandons the check: walking
// such tables is unbounded work, and a repair must not free what a table
// left unwalked references. It returns nil when no tables overlap.
func (c *checker) refuseSharedSnapshotL1s(cnt *checkCounts) error {
	runs := make([]snapL1Run, 0, len(c.snaps))
	for i := range c.snaps {
		sn := &c.snaps[i]
		if sn.L1Offset&c.cmask != 0 || sn.L1Size > maxSnapshotL1Entries {
			continue // not a table the walk would read
		}
		if r, ok := snapshotL1Run(sn, i, c.cs); ok {
			runs = append(runs, r)
		}
	}
	shared := 0
	forEachSnapshotL1Overlap(runs, func(a, b int) bool {
		sa, sb := &c.snaps[a], &c.snaps[b]
		c.logf("ERROR snapshot %s (%s) l1_offset=%#x: L1 table overlaps the L1 table of snapshot %s (%s)", sb.ID, sb.Name, sb.L1Offset, sa.ID, sa.Name)
		cnt.corruptions++
		shared++
		return true
	})
	if shared == 0 {
		return nil
	}
	c.logf("ERROR %d snapshots share L1 tables; refcounts were not checked", shared)
	return errCheckAborted
}
