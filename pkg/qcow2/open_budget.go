package qcow2

import (
	"fmt"
	"strings"
)

// DefaultMemoryBudget is the memory budget of an open (the image and its
// whole backing chain) when Options.MemoryBudget is 0: 512 MiB.
//
// Why that much: a 64 TiB disk at 64 KiB clusters costs about 21.5 MiB
// (L1 table 1 MiB, refcount table 256 KiB, overlap map 10 MiB, caches
// 10 MiB), so a chain of 23 such layers fits, and a single image at
// QEMU's table limits (32 MiB L1 table, 8 MiB refcount table, about
// 370 MiB with their overlap map) still opens alone. Why no more: the node
// plugin serves every volume of a node from one process, and without a
// bound a hostile chain of 64 layers at those limits would take 23 GiB.
const DefaultMemoryBudget = 512 << 20

const (
	// metaEntryBytes is what one cluster in the overlap map's hash map
	// costs: about 36 bytes live per entry (Go 1.26, measured), up to
	// half as much again while the map grows.
	metaEntryBytes = 64
	// cacheEntryOverhead is what a cached table piece costs besides its
	// bytes: the entry, its slot, its front slot and its index entry.
	cacheEntryOverhead = 128
	// snapshotRunBytes is one snapshot's L1 range while the table is
	// scanned at open, twice (snapshot_overlap.go).
	snapshotRunBytes = 48
	// bitmapEntryBytes is one parsed bitmap directory entry, name aside.
	bitmapEntryBytes = 96
)

// costKind is what a charge to the budget pays for.
type costKind int

const (
	costL1 costKind = iota
	costRefTable
	costMetaMap
	costSnapshots
	costCaches
	costMirror
	costBitmaps
	numCostKinds
)

var costNames = [numCostKinds]string{
	"L1 tables", "refcount tables", "overlap map", "snapshot L1 ranges",
	"caches", "read mirror", "bitmaps",
}

// layerCost is memory by kind, in bytes.
type layerCost [numCostKinds]int64

func (c layerCost) sum() int64 {
	var n int64
	for _, v := range c {
		n += v
	}
	return n
}

// minus returns c - d, kind by kind.
func (c layerCost) minus(d layerCost) layerCost {
	for k := range c {
		c[k] -= d[k]
	}
	return c
}

// String lists the non-zero kinds.
func (c layerCost) String() string {
	var parts []string
	for k, v := range c {
		if v != 0 {
			parts = append(parts, fmt.Sprintf("%s %s", costNames[k], fmtMiB(v)))
		}
	}
	return strings.Join(parts, ", ")
}

// fmtMiB formats a byte count for messages.
func fmtMiB(n int64) string {
	if n < 1<<20 && n > -1<<20 {
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}

// openBudget is the memory an open may commit, summed over the chain.
type openBudget struct {
	limit int64 // < 0: no bound
	used  layerCost
}

func newOpenBudget(opt int64) openBudget {
	if opt == 0 {
		opt = DefaultMemoryBudget
	}
	return openBudget{limit: opt}
}

// charge adds c, a cost of the image name, or refuses it (adding nothing)
// with ErrLimit when the chain would hold more than the budget. Callers
// charge before they allocate. A negative c (a table that shrank) refunds.
func (b *openBudget) charge(name string, c layerCost) error {
	next := b.used
	for k := range c {
		next[k] += c[k]
	}
	if b.limit >= 0 && next.sum() > b.limit {
		return fmt.Errorf("%w: opening %s needs %s of metadata in memory (%s), which brings the chain to %s, over its memory budget of %s (Options.MemoryBudget)",
			ErrLimit, name, fmtMiB(c.sum()), c, fmtMiB(next.sum()), fmtMiB(b.limit))
	}
	b.used = next
	return nil
}

// estimateLayerCost is what opening an image with header h under opts
// will hold in memory, from the header alone (so that it is charged
// before anything is allocated or written): upper bounds where the
// tables' contents matter (every L1 and refcount table entry counted as
// an overlap map entry). Bitmap tables, known only from the directory,
// are charged when it is read (readBitmaps). h's table sizes must have
// been bounded (checkTableSizes).
func estimateLayerCost(h *Header, opts Options) layerCost {
	var c layerCost
	cs := h.clusterSize()
	rtEntries := int64(h.RefcountTableClusters) * cs / 8
	c[costL1] = int64(h.L1Size) * 8
	c[costRefTable] = int64(h.RefcountTableClusters) * cs
	mapEntries := int64(h.L1Size) + rtEntries + ceilDiv(c[costL1], cs) + int64(h.RefcountTableClusters) + 1
	c[costMetaMap] = mapEntries * metaEntryBytes
	if h.NbSnapshots > 0 {
		c[costSnapshots] = int64(h.NbSnapshots)*snapshotRunBytes + snapshotWindow
	}
	l2Bytes, rbBytes := cacheBytes(h, opts)
	slice := min(cs, 4096)
	c[costCaches] = int64(cacheEntries(l2Bytes, int(slice), l2CacheMinEntries))*(slice+cacheEntryOverhead) +
		int64(cacheEntries(rbBytes, int(cs), refcountCacheMinEntries))*(cs+cacheEntryOverhead)
	if n := ceilDiv(int64(h.Size), cs); n <= maxMirrorClusters && h.IncompatibleFeatures&incompatExtendedL2 == 0 {
		c[costMirror] = n * 8
	}
	if bitmapsPresent(h) {
		if x, err := decodeBitmapExt(h.Bitmaps, cs); err == nil {
			c[costBitmaps] = int64(x.dirSize) + int64(x.n)*bitmapEntryBytes
		}
	}
	return c
}

// chargeOpen charges n bytes of kind k to the budget of the open in
// progress; outside an open (the chain is gone) there is nothing to charge.
func (img *Image) chargeOpen(k costKind, n int64) error {
	if img.opts.chain == nil {
		return nil
	}
	var c layerCost
	c[k] = n
	return img.opts.chain.budget.charge(img.name, c)
}
