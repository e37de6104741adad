package qcow2

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
)

// Changed-block queries (issue 3): which guest ranges a layer allocates,
// and which ranges differ between two L1 trees of one image or between two
// layers of one backing chain. They read metadata only (L1 and L2 tables),
// never guest data, so they over-approximate: two clusters at different
// host offsets count as different even when their bytes are equal. They
// never under-report.

// Range is a run of guest bytes [Start, Start+Length).
type Range struct {
	Start  int64
	Length int64
}

// End returns Start+Length.
func (r Range) End() int64 { return r.Start + r.Length }

// layerTree is one L1 tree of an image: the active layer or a snapshot.
type layerTree struct {
	what string // for error messages
	l1   []uint64
	size int64 // virtual size of the layer
	snap bool  // a snapshot's tree (its L2 tables are not in img.meta)
}

// treeLocked returns the L1 tree of snapshot (by id, then name), or of the
// active layer for "". The caller holds mu.
func (img *Image) treeLocked(snapshot string) (layerTree, error) {
	if img.closed {
		return layerTree{}, ErrClosed
	}
	if snapshot == "" {
		return layerTree{what: "active layer", l1: img.l1, size: img.size}, nil
	}
	t, err := readSnapshotTable(img.f, img.hdr)
	if err != nil {
		return layerTree{}, err
	}
	i := findSnapshot(t.Entries, snapshot)
	if i < 0 {
		return layerTree{}, fmt.Errorf("%w: %q", ErrSnapshotNotFound, snapshot)
	}
	e := &t.Entries[i]
	if e.DiskSize > uint64(maxImageSize) {
		return layerTree{}, errorf(ErrInvalid, "snapshot %q: disk size %d too large", e.ID, e.DiskSize)
	}
	l1, err := img.readSnapshotL1(e) // bounded by maxSnapshotL1Entries
	if err != nil {
		return layerTree{}, err
	}
	return layerTree{what: fmt.Sprintf("snapshot %q", e.ID), l1: l1, size: int64(e.DiskSize), snap: true}, nil
}

// l2Table reads the whole L2 table of L1 entry l1i of tree into buf and
// reports whether there is one. Tables are read from the file, not through
// the L2 cache (the cache is write-through, so the file is authoritative
// under mu, and a scan of a whole tree would only evict the hot slices).
func (img *Image) l2Table(tree *layerTree, l1i int64, buf []byte, fsize int64) (bool, error) {
	if l1i >= int64(len(tree.l1)) {
		return false, nil
	}
	off := int64(tree.l1[l1i] & l1OffsetMask)
	if off == 0 {
		return false, nil
	}
	bad := func(format string, args ...any) error {
		msg := tree.what + ": " + fmt.Sprintf(format, args...)
		if tree.snap {
			return errorf(ErrInvalid, "%s", msg)
		}
		return img.corruptionOrInvalid("%s", msg)
	}
	if off%img.cs != 0 || off > fsize-img.cs {
		return false, bad("L1 entry %d: L2 table offset %#x is invalid", l1i, off)
	}
	if k := img.meta.kind(off / img.cs); k != metaNone && k != metaL2 {
		return false, bad("L1 entry %d points at the %s (%#x)", l1i, k, off)
	}
	if err := readFull(img.f, buf, off); err != nil {
		return false, err
	}
	if !tree.snap {
		img.overlayPinned(buf, off) // mappings in the write journal only
	}
	return true, nil
}

// rangeList builds a sorted list of ranges, merging touching ones.
type rangeList []Range

func (l *rangeList) add(start, n int64) {
	if n <= 0 {
		return
	}
	if k := len(*l); k > 0 && (*l)[k-1].End() >= start {
		last := &(*l)[k-1]
		last.Length = max(last.End(), start+n) - last.Start
		return
	}
	*l = append(*l, Range{Start: start, Length: n})
}

// AllocatedRanges returns the guest ranges that the layer itself defines:
// clusters stored in it (data or compressed) and zero clusters, whatever
// lies below in the backing chain. snapshot names an internal snapshot (id,
// then name); "" is the active layer. The ranges are sorted, merged and
// clipped to the layer's virtual size.
func (img *Image) AllocatedRanges(snapshot string) ([]Range, error) {
	img.mu.RLock()
	defer img.mu.RUnlock()
	tree, err := img.treeLocked(snapshot)
	if err != nil {
		return nil, err
	}
	fsize, err := img.f.Size()
	if err != nil {
		return nil, err
	}
	var out rangeList
	buf := make([]byte, img.cs)
	span := img.cs * img.l2Entries // guest bytes one L2 table maps
	for l1i := int64(0); l1i < ceilDiv(tree.size, span); l1i++ {
		ok, err := img.l2Table(&tree, l1i, buf, fsize)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		for k := int64(0); k < img.l2Entries; k++ {
			off := l1i*span + k*img.cs
			if off >= tree.size {
				break
			}
			e, bitmap := img.entryAt(buf, k)
			if e == 0 && bitmap == 0 {
				continue // unallocated: most entries of a sparse table
			}
			m, err := img.decodeL2(off/img.cs, e, bitmap)
			if err != nil {
				return nil, err
			}
			// Subcluster granularity on extended L2 images.
			_ = img.clusterRuns(m, 0, min(img.cs, tree.size-off), func(in, l int64, sm mapping) error {
				if sm.kind != kindUnallocated {
					out.add(off+in, l)
				}
				return nil
			})
		}
	}
	return out, nil
}

// clusterState is what reading one guest cluster of a tree returns, as far
// as metadata tells: two clusters with equal states read the same bytes.
type clusterState struct {
	kind clusterKind // kindZero also for "reads as zeros" of any origin
	key  uint64      // host offset (data) or descriptor (compressed)
}

// state classifies the subcluster at offset in of a cluster mapped by m
// (the whole cluster without extended L2 entries); past the tree's size
// the guest reads zeros (the shorter layer is compared as if
// zero-extended, like qemu-img compare does), and so do unallocated
// clusters when there is no backing file.
func (img *Image) state(m mapping, in int64, past, backing bool) clusterState {
	if past {
		return clusterState{kind: kindZero}
	}
	sm := img.subMapping(m, in)
	switch sm.kind {
	case kindData:
		return clusterState{kind: kindData, key: uint64(sm.host)}
	case kindCompressed:
		return clusterState{kind: kindCompressed, key: m.raw &^ oflagCopied}
	case kindUnallocated:
		if backing {
			return clusterState{kind: kindUnallocated}
		}
	}
	return clusterState{kind: kindZero}
}

// decodeUnlessPast decodes an L2 entry of a tree, unless the cluster lies
// past the tree's size (its entry is then not looked at).
func (img *Image) decodeUnlessPast(vi int64, e, bitmap uint64, past bool) (mapping, error) {
	if past {
		return mapping{}, nil
	}
	return img.decodeL2(vi, e, bitmap)
}

// ChangedRanges returns the guest ranges whose content may differ between
// two L1 trees of this image: fromSnapshot and toSnapshot name internal
// snapshots (id, then name), "" is the active layer. It compares L2
// entries only: a cluster both trees map to the same host offset (or the
// same compressed stream), both read as zeros, or both leave to the
// backing file is unchanged; L2 tables both trees share are skipped whole.
// Anything else is reported, so a rewrite with identical bytes counts as a
// change. When the sizes differ the shorter tree is taken as
// zero-extended. The ranges are sorted, merged and clipped to the larger
// size.
func (img *Image) ChangedRanges(fromSnapshot, toSnapshot string) ([]Range, error) {
	img.mu.RLock()
	defer img.mu.RUnlock()
	a, err := img.treeLocked(fromSnapshot)
	if err != nil {
		return nil, err
	}
	b, err := img.treeLocked(toSnapshot)
	if err != nil {
		return nil, err
	}
	fsize, err := img.f.Size()
	if err != nil {
		return nil, err
	}
	backing := img.hdr.BackingFile != ""
	size := max(a.size, b.size)
	common := min(a.size, b.size)
	span := img.cs * img.l2Entries
	bufA := make([]byte, img.cs)
	bufB := make([]byte, img.cs)
	var out rangeList
	for l1i := int64(0); l1i < ceilDiv(size, span); l1i++ {
		var la, lb uint64
		if l1i < int64(len(a.l1)) {
			la = a.l1[l1i] & l1OffsetMask
		}
		if l1i < int64(len(b.l1)) {
			lb = b.l1[l1i] & l1OffsetMask
		}
		first := l1i * span
		if la == lb && first+span <= common {
			continue // one L2 table (or none) for both, wholly inside both sizes
		}
		okA, err := img.l2Table(&a, l1i, bufA, fsize)
		if err != nil {
			return nil, err
		}
		okB := okA
		if lb != la {
			if okB, err = img.l2Table(&b, l1i, bufB, fsize); err != nil {
				return nil, err
			}
		} else if okA {
			copy(bufB, bufA)
		}
		for k := int64(0); k < img.l2Entries; k++ {
			off := first + k*img.cs
			if off >= size {
				break
			}
			var ea, eb, bma, bmb uint64
			if okA {
				ea, bma = img.entryAt(bufA, k)
			}
			if okB {
				eb, bmb = img.entryAt(bufB, k)
			}
			n := min(img.cs, size-off)
			// Equal entries (COPIED aside, which reads nothing) within
			// both sizes read the same: most of two tables that share
			// all but a few clusters.
			same := (ea^eb)&^oflagCopied == 0 && bma == bmb && off+img.cs <= common
			if !same && (la != lb || off+img.cs > common) {
				ma, err := img.decodeUnlessPast(off/img.cs, ea, bma, off >= a.size)
				if err != nil {
					return nil, err
				}
				mb, err := img.decodeUnlessPast(off/img.cs, eb, bmb, off >= b.size)
				if err != nil {
					return nil, err
				}
				// One step per subcluster on extended L2 images.
				for in := int64(0); in < n; in += img.scs {
					if img.state(ma, in, off >= a.size, backing) != img.state(mb, in, off >= b.size, backing) {
						out.add(off+in, min(img.scs, n-in))
					}
				}
			}
			if common > off && common < off+n {
				// The shorter tree ends inside this cluster: its tail
				// reads zeros, the other tree's may not.
				out.add(common, off+n-common)
			}
		}
	}
	return out, nil
}

// ErrNotInChain: the base given to ChangedBetweenLayers is not a layer of
// the image's backing chain.
var ErrNotInChain = errors.New("not a layer of the backing chain")

// ChangedBetweenLayers returns the guest ranges where top's content may
// differ from base's, where base is a layer of top's backing chain (top's
// backing file, its backing file, ...), compared by identity: pass the
// Disk that top.Backing() (and so on down) returns. These are the ranges
// any layer above base allocates (AllocatedRanges), plus the ranges where
// a layer above base is shorter than base (there it hides base's content
// behind zeros). base == top yields no ranges. Each layer is read under
// its own lock, one after the other.
func ChangedBetweenLayers(top *Image, base Disk) ([]Range, error) {
	if top == nil || base == nil {
		return nil, fmt.Errorf("%w: no top image or no base", ErrInvalid)
	}
	if Disk(top) == base {
		return nil, nil
	}
	// Find base first: no metadata is read for a base that is not there.
	var layers []*Image
	for d := Disk(top); d != base; {
		img, ok := d.(*Image)
		if !ok || img.Backing() == nil {
			return nil, fmt.Errorf("%w: the base is not below %s", ErrNotInChain, top.name)
		}
		if len(layers) > maxChainDepth {
			return nil, fmt.Errorf("%w: backing chain deeper than %d", ErrInvalid, maxChainDepth)
		}
		layers = append(layers, img)
		d = img.Backing()
	}
	topSize := top.Size()
	baseSize := base.Size()
	var all []Range
	for _, l := range layers {
		rs, err := l.AllocatedRanges("")
		if err != nil {
			return nil, err
		}
		for _, r := range rs {
			if r.Start >= topSize {
				break
			}
			all = append(all, Range{Start: r.Start, Length: min(r.End(), topSize) - r.Start})
		}
		if s := l.Size(); s < baseSize {
			all = append(all, Range{Start: s, Length: baseSize - s})
		}
	}
	return mergeRanges(all), nil
}

// mergeRanges sorts ranges and merges overlapping or touching ones.
func mergeRanges(rs []Range) []Range {
	slices.SortFunc(rs, func(a, b Range) int { return cmp.Compare(a.Start, b.Start) })
	var out rangeList
	for _, r := range rs {
		out.add(r.Start, r.Length)
	}
	return out
}
