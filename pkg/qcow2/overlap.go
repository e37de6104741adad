package qcow2

import (
	"fmt"
)

// metaKind classifies a host cluster that holds metadata.
type metaKind uint8

const (
	metaNone metaKind = iota // guest data or free
	metaHeader
	metaL1
	metaL2
	metaRefTable
	metaRefBlock
	metaSnapshots // snapshot table and snapshot L1 tables
	metaBitmaps   // bitmap directory, tables and data (bitmap.go)
)

func (k metaKind) String() string {
	return [...]string{"data", "header", "active L1 table", "L2 table", "refcount table", "refcount block", "snapshot metadata", "bitmap metadata"}[k]
}

// metadataSet knows which host clusters hold metadata, so that every write
// can be checked against it (DESIGN.md rule 4). It is read under the
// image's read lock and changed under its write lock.
//
// Clusters are kept one by one in m, except the snapshot table and the
// snapshot L1 tables found at open, which are kept as runs in snaps (see
// clusterSpans for why). snaps was recorded last at open, so it comes
// first in a lookup; a later add or remove of one of its clusters takes
// the cluster out of it, so the latest record of a cluster always wins.
//
// maybe is a filter in front of both: bit c mod maybeBits is set for
// every metadata cluster c (and stays set after a removal), so the check
// of a guest data write, the common case, is one bit test instead of a
// map lookup.
type metadataSet struct {
	m     map[int64]metaKind
	snaps clusterSpans
	maybe [maybeBits / 64]uint64
}

const maybeBits = 1 << 16

func (s *metadataSet) mark(c int64) {
	s.maybe[uint64(c)/64%(maybeBits/64)] |= 1 << (uint64(c) % 64)
}

func (s *metadataSet) add(c int64, k metaKind) {
	s.snaps.remove(c)
	s.m[c] = k
	s.mark(c)
}

func (s *metadataSet) remove(c int64) {
	delete(s.m, c)
	s.snaps.remove(c)
}

func (s *metadataSet) kind(c int64) metaKind {
	if s.maybe[uint64(c)/64%(maybeBits/64)]&(1<<(uint64(c)%64)) == 0 {
		return metaNone
	}
	if s.snaps.contains(c) {
		return metaSnapshots
	}
	return s.m[c]
}

// setSnaps records runs of snapshot metadata, marking them in the filter:
// cluster by cluster while that is cheaper than filling it whole.
func (s *metadataSet) setSnaps(runs clusterSpans) {
	s.snaps = runs
	if runs.clusters() >= maybeBits {
		for i := range s.maybe {
			s.maybe[i] = ^uint64(0)
		}
		return
	}
	for _, r := range runs {
		for c := r.start; c < r.end; c++ {
			s.mark(c)
		}
	}
}

func (s *metadataSet) addRange(off, n, cs int64, k metaKind) {
	for c := off / cs; c < ceilDiv(off+n, cs); c++ {
		s.add(c, k)
	}
}

// build records the header, the active L1 table and its L2 tables, the
// refcount table and blocks, and the snapshot table with the snapshots' L1
// tables.
func (s *metadataSet) build(img *Image) error {
	*s = metadataSet{m: make(map[int64]metaKind)}
	cs := img.cs
	h := img.hdr
	s.add(0, metaHeader)
	s.addRange(int64(h.L1TableOffset), int64(h.L1Size)*8, cs, metaL1)
	for _, e := range img.l1 {
		if off := int64(e & l1OffsetMask); off != 0 && off%cs == 0 {
			s.add(off/cs, metaL2)
		}
	}
	s.addRange(int64(h.RefcountTableOffset), int64(h.RefcountTableClusters)*cs, cs, metaRefTable)
	for _, e := range img.rt {
		if off := int64(e & refTableOffMask); off != 0 && off%cs == 0 {
			s.add(off/cs, metaRefBlock)
		}
	}
	return s.addSnapshots(img)
}

// checkMetaWrite verifies that a write at host offset off lands in a
// cluster of the expected kind (metaNone for guest data). A mismatch means
// the metadata is inconsistent: the image is marked corrupt.
func (img *Image) checkMetaWrite(off int64, want metaKind) error {
	if got := img.meta.kind(off >> img.cb); got != want {
		return img.corruption("a %s write at %#x would overwrite the %s", want, off, got)
	}
	return nil
}

// corruption marks the image corrupt (on disk, when writable) and
// read-only, and returns an error wrapping ErrCorrupt.
func (img *Image) corruption(format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	img.corruptMu.Lock()
	defer img.corruptMu.Unlock()
	if !img.corrupt.Load() && !img.readOnly {
		incompat := img.hdrIncompat.Load() | incompatCorrupt
		if img.hdr.Version >= 3 && img.writeU64(hdrOffIncompat, incompat) == nil {
			img.hdrIncompat.Store(incompat)
			_ = img.f.Sync()
		}
	}
	img.corrupt.Store(true)
	return fmt.Errorf("%w: %s; the image is now read-only (repair with `img check -r all`)", ErrCorrupt, msg)
}

// addSnapshots records the snapshot table and every snapshot's L1 table
// (what QEMU's default "cached" overlap check covers; inactive L2 tables
// would need every snapshot L1 read at open), as runs.
func (s *metadataSet) addSnapshots(img *Image) error {
	if img.hdr.NbSnapshots == 0 {
		return nil
	}
	runs, err := snapshotMetaRuns(img.f, img.hdr)
	if err != nil {
		return err
	}
	s.setSnaps(runs)
	return nil
}
