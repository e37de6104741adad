package qcow2

import (
	"slices"
)

// allocator hands out clusters whose refcount is already 1 on disk and
// durable and whose content reads as zeros (fresh space at the end of the
// file, or punched holes). Because of that, a new L2 entry may point at a
// cluster as soon as its data is written, with no flush in between, and a
// power failure can never expose another offset's old data through it.
//
// Clusters that lose their last reference are not decremented at once:
// their refcount drops only after a flush has made the unlinking L2/L1 write
// durable (rule 3: a cluster never has two owners after a crash).
type allocator struct {
	eof     int64   // first cluster past everything allocated at the end of the file
	cursor  int64   // no free hole below this cluster (QEMU's free_cluster_index)
	pool    []int64 // reserved clusters, ascending
	batch   int64   // clusters to reserve next time
	pending []int64 // unlinked clusters, decremented after the next flush
	// blocksCreated counts refcount blocks allocRun has created.
	blocksCreated int
}

const (
	minReserveBytes = 1 << 20
	maxReserveBytes = 64 << 20
	// reserveCapDivisor bounds a batch to this fraction of the virtual size.
	reserveCapDivisor = 32
)

func (a *allocator) init(eofClusters int64) {
	a.eof = eofClusters
	a.cursor = 0
}

func (a *allocator) freeLater(c int64) { a.pending = append(a.pending, c) }

// takeCluster returns one reserved cluster.
func (img *Image) takeCluster() (int64, error) {
	if len(img.alloc.pool) == 0 {
		if err := img.reserve(1); err != nil {
			return 0, err
		}
	}
	c := img.alloc.pool[0]
	img.alloc.pool = img.alloc.pool[1:]
	return c, nil
}

// ensureReserved makes sure at least n clusters are reserved.
func (img *Image) ensureReserved(n int64) error {
	if have := int64(len(img.alloc.pool)); have < n {
		return img.reserve(n - have)
	}
	return nil
}

// reserve sets aside at least n clusters: holes below the end of the file
// first (punched, so they read as zeros), then new space at the end. Their
// refcounts are written and, together with the punches and the file size,
// made durable before any of them is handed out.
func (img *Image) reserve(n int64) error {
	if err := img.markDirty(); err != nil {
		return err
	}
	a := &img.alloc
	minBatch := max(minReserveBytes/img.cs, 1)
	a.batch = min(max(a.batch*2, minBatch), reserveCapClusters(img.size, img.cs))
	want := max(n, a.batch)
	var got []int64
	holes, err := img.findHoles(want)
	if err != nil {
		return err
	}
	for _, h := range holes {
		if err := img.setRefcountRange(img.rt, h.start, h.n, 1); err != nil {
			return err
		}
		for c := h.start; c < h.start+h.n; c++ {
			got = append(got, c)
		}
		if err := img.f.PunchHole(h.start*img.cs, h.n*img.cs); err != nil {
			return err
		}
	}
	blocksBefore := a.blocksCreated
	var runStart, runLen int64
	if rest := want - int64(len(got)); rest > 0 {
		start, err := img.allocRunLive(rest)
		if err != nil {
			return err
		}
		for c := start; c < start+rest; c++ {
			got = append(got, c)
		}
		runStart, runLen = start, rest
	}
	// Refcounts must be durable before an L2 entry points at a cluster,
	// and punched holes before a cluster is reused. With lazy refcounts
	// (the dirty bit is set and durable) only the holes need it: a crash
	// that loses the file extension is undone by the rebuild on open,
	// which restores the size (the clusters read as zeros).
	switch {
	case img.lazy() && len(holes) == 0:
	case len(holes) == 0 && a.blocksCreated == blocksBefore && runLen > 0:
		// Only refcount entries in existing blocks and the file size must
		// be durable: write exactly those durably instead of flushing all
		// guest data written since the last sync.
		if err := img.makeRunDurable(runStart, runLen); err != nil {
			return err
		}
	default:
		if err := img.f.Sync(); err != nil {
			return err
		}
	}
	a.pool = append(a.pool, got...)
	slices.Sort(a.pool)
	return nil
}

type clusterRun struct{ start, n int64 }

// findHoles returns up to want free clusters below the end of the file.
func (img *Image) findHoles(want int64) ([]clusterRun, error) {
	a := &img.alloc
	var runs []clusterRun
	var found int64
	c := a.cursor
	for ; c < a.eof && found < want; c++ {
		if img.meta.kind(c) != metaNone || img.inPool(c) {
			continue
		}
		blk, _, err := img.refBlock(img.rt, c/img.refPerBlk)
		if err != nil {
			return nil, err
		}
		if blk == nil {
			// No block: nothing here is allocated, but using it needs a
			// block; leave such ranges to allocRun at the end of the file.
			c = (c/img.refPerBlk+1)*img.refPerBlk - 1
			continue
		}
		if getRefcount(blk, uint64(c%img.refPerBlk), img.refOrder) != 0 {
			continue
		}
		if n := len(runs); n > 0 && runs[n-1].start+runs[n-1].n == c {
			runs[n-1].n++
		} else {
			runs = append(runs, clusterRun{c, 1})
		}
		found++
	}
	a.cursor = c
	return runs, nil
}

func (img *Image) inPool(c int64) bool {
	_, ok := slices.BinarySearch(img.alloc.pool, c)
	return ok
}

// applyFrees decrements the refcounts of clusters whose unlinking is now
// durable. A cluster that drops to zero becomes a hole for reuse.
func (img *Image) applyFrees(list []int64) error {
	for i, c := range list {
		rc, err := img.refcount(c)
		if err != nil {
			img.alloc.pending = append(img.alloc.pending, list[i:]...)
			return err
		}
		if rc == 0 {
			continue // already free (a repaired leak, say); never underflow
		}
		if err := img.setRefcountLive(c, rc-1); err != nil {
			img.alloc.pending = append(img.alloc.pending, list[i:]...)
			return err
		}
		if rc == 1 {
			img.meta.remove(c)
			img.alloc.cursor = min(img.alloc.cursor, c)
		}
	}
	return nil
}

// releasePool returns reserved but unused clusters, so that a clean close
// leaves no leaks, and trims them off the end of the file.
func (img *Image) releasePool() error {
	a := &img.alloc
	for i := 0; i < len(a.pool); {
		j := i + 1
		for j < len(a.pool) && a.pool[j] == a.pool[j-1]+1 {
			j++
		}
		if err := img.setRefcountRange(img.rt, a.pool[i], int64(j-i), 0); err != nil {
			// The runs before, and any part of this one, may be free
			// on disk now: handed out from the pool again, they would
			// be in use at refcount 0. The rest of this run leaks.
			a.cursor = min(a.cursor, a.pool[i])
			a.pool = a.pool[j:]
			return err
		}
		a.cursor = min(a.cursor, a.pool[i])
		i = j
	}
	// Trim a free tail: reserved clusters at the end of the file.
	end := a.eof
	for i := len(a.pool) - 1; i >= 0 && a.pool[i] == end-1; i-- {
		end--
	}
	a.pool = nil
	if end < a.eof {
		if err := img.f.Sync(); err != nil {
			return err
		}
		if err := img.f.Truncate(end * img.cs); err != nil {
			return err
		}
		a.eof = end
	}
	return nil
}

// makeRunDurable makes the refcounts of a run allocated at the end of the
// file, and the file size that covers it, durable: the refcount bytes are
// rewritten with RWF_DSYNC, and so is the run's last sector (zeros: the
// run is fresh), which carries the new size with it.
//
// reserve calls it only when allocRunLive created no refcount block, so
// every block the run needs is in the table already.
func (img *Image) makeRunDurable(start, n int64) error {
	err := img.refcountSpans(img.rt, start, n, func(s refcountSpan) error {
		return writeDurable(img.f, s.bytes(), s.off+s.from)
	})
	if err != nil {
		return err
	}
	end := (start + n) * img.cs
	return writeDurable(img.f, make([]byte, 512), end-512)
}

// reserveCapClusters is the largest batch reserve sets aside on its own
// initiative: 1/32 of the virtual size, within [1 MiB, 64 MiB]. A kill
// leaks the unused part of the pool, so the batch is bounded by the disk
// it serves, not only by a constant (a 64 MiB batch is a quarter of a
// 256 MiB disk).
func reserveCapClusters(virtual, cs int64) int64 {
	return max(min(max(virtual/reserveCapDivisor, minReserveBytes), maxReserveBytes)/cs, 1)
}

// settleFrees applies the deferred frees once more than a reservation
// batch of them has piled up (a guest that discards a lot between
// flushes): a sync makes their unlinking durable first, as Flush does.
// Without it a kill would leak all of them. It must only be called
// between operations, never while a batch that unlinked clusters is still
// being planned (its L2 writes are not on disk yet).
func (img *Image) settleFrees() error {
	if int64(len(img.alloc.pending)) <= reserveCapClusters(img.size, img.cs) {
		return nil
	}
	if err := img.checkpointLocked(); err != nil {
		return err
	}
	if err := img.f.Sync(); err != nil {
		return err
	}
	pend := img.alloc.pending
	img.alloc.pending = nil
	return img.applyFrees(pend)
}
