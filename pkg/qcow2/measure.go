package qcow2

import "fmt"

// Measure computes what `qemu-img measure -O qcow2` reports for a new image
// of virtual size size created with opts: required is the file size the
// image needs when it holds allocated bytes of guest data (as counted by
// MeasureData, or 0 for an empty image), full is the size of the fully
// allocated image. Metadata is counted for a fully allocated image in both,
// as QEMU's qcow2_measure does, so required overestimates a little.
// Preallocation full or falloc makes required equal full.
func Measure(size int64, opts CreateOptions, allocated int64) (required, full int64, err error) {
	// The backing file is not opened (measure counts as if nothing were shared).
	opts.BackingFile, opts.BackingFormat, opts.Unsafe = "", "", false
	o, err := normalizeCreate(opts)
	if err != nil {
		return 0, 0, err
	}
	if size < 0 || allocated < 0 {
		return 0, 0, fmt.Errorf("%w: negative size", ErrInvalid)
	}
	cs := o.ClusterSize
	if size > maxImageSize {
		return 0, 0, fmt.Errorf("%w: size %d is too large", ErrRange, size)
	}
	virtual := ceilDiv(size, cs) * cs
	es := l2EntrySize(o.ExtendedL2)
	l2Tables := ceilDiv(virtual/cs, cs/es)
	if l2Tables*8 > maxL1Bytes {
		return 0, 0, fmt.Errorf("%w: The image size is too large (try using a larger cluster size)", ErrRange)
	}
	refOrder := int64(0)
	for 1<<refOrder < o.RefcountBits {
		refOrder++
	}
	full = preallocSize(virtual, cs, refOrder, es)
	if o.Preallocation == PreallocFull || o.Preallocation == PreallocFalloc {
		allocated = virtual
	}
	return full - virtual + allocated, full, nil
}

// preallocSize is the file size of a fully allocated image: the header,
// L2 tables for every cluster, the L1 table (whole clusters), refcount
// metadata for all of it, and the data.
func preallocSize(virtual, cs, refOrder, es int64) int64 {
	perL2 := cs / es
	l2Entries := ceilDiv(virtual/cs, perL2) * perL2
	perL1 := cs / 8
	l1Entries := ceilDiv(l2Entries*es/cs, perL1) * perL1
	meta := cs + l2Entries*es + l1Entries*8
	meta += refcountMetaSize((meta+virtual)/cs, cs, refOrder)
	return meta + virtual
}

// refcountMetaSize is the size of the refcount table and blocks needed to
// count clusters clusters plus themselves: the fixed point of blocks
// counting data, table and blocks.
func refcountMetaSize(clusters, cs, refOrder int64) int64 {
	perBlock := cs * 8 >> refOrder
	perTableCluster := cs / 8
	var blocks, table int64
	for {
		nb := ceilDiv(clusters+table+blocks, perBlock)
		nt := ceilDiv(nb, perTableCluster)
		if nb == blocks && nt == table {
			return (blocks + table) * cs
		}
		blocks, table = nb, nt
	}
}

// MeasureData counts the guest bytes a copy of d needs as data clusters of
// size cs, as qemu-img measure does: every extent that holds data (not
// known to read as zeros), widened to whole clusters.
func MeasureData(d Disk, cs int64) (int64, error) {
	if cs <= 0 || cs&(cs-1) != 0 {
		return 0, fmt.Errorf("%w: cluster size %d", ErrInvalid, cs)
	}
	size := d.Size()
	exts, err := d.Map(0, size)
	if err != nil {
		return 0, err
	}
	var n, pos int64
	for _, e := range exts {
		end := e.Start + e.Length
		if end <= pos || e.Zero || !e.Data {
			continue
		}
		start := max(pos, e.Start)
		stop := ceilDiv(end, cs) * cs
		n += stop - start/cs*cs
		pos = stop
	}
	return n, nil
}
