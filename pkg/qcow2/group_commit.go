package qcow2

import "sync"

// Group commit of copy-on-write allocations.
//
// A write whose new cluster replaces content that is not zeros must have
// its data durable before the L2 entry that maps it (engine.md, "Data
// before mapping"). Syncing under the exclusive lock would make every such
// writer pay a whole fdatasync of its own and stop all other I/O meanwhile.
// Instead the writer (WriteAt -> writeGrouped -> commitGrouped; the copy of
// a live collapse, collapseFill, commits the same way):
//
//  1. under mu, exclusively: plans the batch (takes its fresh clusters),
//     pwrites the data, and marks its guest clusters in flight;
//  2. without mu: waits for a sync that started after its pwrites
//     returned (syncGroup: one fdatasync serves every writer waiting);
//  3. under mu, exclusively: writes the L2 entries, punches, frees, and
//     clears the in-flight marks.
//
// Between 1 and 3 the old mapping is still in place, so readers see the
// old content (the write is not acknowledged yet); the fresh clusters are
// out of the pool, so nobody else can take them. What must not happen is
// a change of the same mappings meanwhile: a second allocation of the same
// guest cluster would copy the old content and lose this write, and would
// free the old cluster twice. So allocating writers wait for in-flight
// clusters they touch, and every other operation that changes metadata
// takes mu with lockQuiesced, which waits until nothing is in flight (and
// holds new allocations back while it waits, so it cannot starve).

// cowInflight tracks the copy-on-write allocations between steps 1 and 3.
// All fields are guarded by Image.mu held exclusively.
type cowInflight struct {
	clusters map[int64]chan struct{} // guest cluster -> closed at step 3
	pending  int                     // allocations in flight
	draining int                     // lockQuiesced callers waiting
	idle     *sync.Cond              // on Image.mu: pending or draining reached 0
}

func (img *Image) cowIdle() *sync.Cond {
	if img.cow.idle == nil {
		img.cow.idle = sync.NewCond(&img.mu)
	}
	return img.cow.idle
}

// lockQuiesced locks mu exclusively once no copy-on-write allocation is in
// flight and the write journal is checkpointed. Every exclusive holder of
// mu that changes metadata takes it this way (or with lockQuiescedRange),
// except the allocating write path itself and Flush (which only syncs and
// releases clusters already unlinked).
func (img *Image) lockQuiesced() {
	// Mappings in the write journal go to the image first: the caller may
	// read L2 tables from the file or share them with a snapshot. A
	// failure is sticky and makes writable (which callers check) fail.
	img.lockQuiescedRange(0, -1)
}

// lockQuiescedRange is lockQuiesced for an operation that changes the
// mappings of guest clusters [first, last] only, through the L2 cache
// (zeroing, discard): the journal is checkpointed only if it holds
// entries of those clusters' L2 slices, which the operation could
// otherwise change under a record that a replay would apply again.
// last < first means the whole disk.
func (img *Image) lockQuiescedRange(first, last int64) {
	img.mu.Lock()
	defer func() {
		if last < first {
			// The caller may change any mapping, by any means.
			img.forgetMirrorAll()
		}
		if last < first || img.jr.pinsGuest(first>>img.sliceBits, last>>img.sliceBits) {
			_ = img.checkpointLocked()
		}
	}()
	if img.cow.pending == 0 {
		return
	}
	img.cow.draining++
	for img.cow.pending > 0 {
		img.cowIdle().Wait()
	}
	img.cow.draining--
	if img.cow.draining == 0 {
		img.cowIdle().Broadcast() // writers held back by waitAllocatable
	}
}

// waitAllocatable is called with mu held exclusively; it returns, still
// holding it, once no guest cluster in [first, last] is in flight and no
// lockQuiesced caller is waiting. Callers must recheck anything they
// checked before, as mu may have been released meanwhile.
func (img *Image) waitAllocatable(first, last int64) {
	for {
		if img.cow.draining > 0 {
			img.cowIdle().Wait()
			continue
		}
		ch := img.cowBusy(first, last)
		if ch == nil {
			return
		}
		img.mu.Unlock()
		<-ch
		img.mu.Lock()
	}
}

// cowBusy returns the in-flight mark of a guest cluster in [first, last].
func (img *Image) cowBusy(first, last int64) chan struct{} {
	if len(img.cow.clusters) == 0 {
		return nil
	}
	for vi := first; vi <= last; vi++ {
		if ch, ok := img.cow.clusters[vi]; ok {
			return ch
		}
	}
	return nil
}

// cowBegin marks guest clusters [first, last] in flight.
func (img *Image) cowBegin(first, last int64) chan struct{} {
	if img.cow.clusters == nil {
		img.cow.clusters = map[int64]chan struct{}{}
	}
	ch := make(chan struct{})
	for vi := first; vi <= last; vi++ {
		img.cow.clusters[vi] = ch
	}
	img.cow.pending++
	return ch
}

// cowEnd clears the marks cowBegin set and wakes who waits for them.
func (img *Image) cowEnd(first, last int64, ch chan struct{}) {
	for vi := first; vi <= last; vi++ {
		delete(img.cow.clusters, vi)
	}
	close(ch)
	if img.cow.pending--; img.cow.pending == 0 && img.cow.draining > 0 {
		img.cowIdle().Broadcast()
	}
}

// syncGroup shares fdatasync between writers: a caller of sync returns
// once a sync that started after the call began has completed, so every
// write that returned before the call is durable. Syncs run one at a time;
// whoever finds none running starts the next, for all who wait.
type syncGroup struct {
	mu      sync.Mutex
	cond    sync.Cond
	started uint64 // syncs started
	done    uint64 // syncs completed (the one running is started > done)
	errGen  uint64 // the last sync that failed
	err     error
}

func (g *syncGroup) sync(f File) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cond.L == nil {
		g.cond.L = &g.mu
	}
	want := g.started + 1 // the first sync that starts after now
	for g.done < want {
		if g.started > g.done {
			g.cond.Wait()
			continue
		}
		g.started++
		gen := g.started
		g.mu.Unlock()
		err := f.Sync()
		g.mu.Lock()
		g.done = gen
		if err != nil {
			g.err, g.errGen = err, gen
		}
		g.cond.Broadcast()
	}
	if g.err != nil && g.errGen >= want {
		return g.err
	}
	return nil
}
