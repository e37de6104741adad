package qcow2

import (
	"cmp"
	"errors"
	"slices"
)

var errNotInPlace = errors.New("needs allocation")

// writable reports why the image cannot be written, if it cannot.
func (img *Image) writable() error {
	if err := img.writableBase(); err != nil {
		return err
	}
	if img.bm.markPending.Load() {
		return errorf(ErrReadOnly, "the persistent bitmaps could not be marked in use (after an undone Freeze); a retry of the write or operation tries again")
	}
	return nil
}

// writableBase is writable but for the bitmaps' pending mark.
func (img *Image) writableBase() error {
	if img.readOnly {
		return ErrReadOnly
	}
	if img.corrupt.Load() {
		return errorf(ErrCorrupt, "writes are refused after corruption was detected")
	}
	if err := img.jr.err(); err != nil {
		return err
	}
	return syncFailure(img.f)
}

// prepareWrite is writable for the write paths and the operations that
// change the image, called without img.mu: once nothing else refuses the
// write, it retries marking the bitmaps in use where an undone Freeze
// could not (so a corrupt or failed image is not written to for it).
func (img *Image) prepareWrite() error {
	if err := img.writableBase(); err != nil {
		return err
	}
	if img.bm.markPending.Load() {
		if err := img.markBitmapsInUse(); err != nil {
			return err
		}
	}
	return img.writable()
}

// WriteAt writes p at guest offset off. It returns once the data and every
// metadata change that maps it have been written to the file (not yet
// flushed: that is Flush).
func (img *Image) WriteAt(p []byte, off int64) (int, error) {
	if err := img.prepareWrite(); err != nil {
		return 0, err
	}
	img.mu.RLock()
	img.markBitmaps(off, int64(len(p)))
	done, err := img.writeInPlace(p, off)
	img.mu.RUnlock()
	if err != nil {
		return 0, err
	}
	if done {
		return len(p), nil
	}
	img.mu.Lock()
	defer img.mu.Unlock()
	if err := img.checkRange(off, int64(len(p))); err != nil || len(p) == 0 {
		return 0, err
	}
	img.waitAllocatable(off/img.cs, (off+int64(len(p))-1)/img.cs)
	if err := img.checkRange(off, int64(len(p))); err != nil {
		return 0, err
	}
	if err := img.writable(); err != nil {
		return 0, err
	}
	if err := img.writeGrouped(p, off); err != nil {
		return 0, err
	}
	return len(p), nil
}

// writeInPlace writes p if every cluster it touches is owned by this image
// alone (OFLAG_COPIED); it reports false, having written nothing, otherwise.
func (img *Image) writeInPlace(p []byte, off int64) (bool, error) {
	if err := img.checkRange(off, int64(len(p))); err != nil {
		return false, err
	}
	if w := img.dataWord(off, int64(len(p))); w&mirrorCopied != 0 {
		// The common request: one cluster of plain data this image owns.
		host := int64(w &^ mirrorCopied)
		if err := img.checkMetaWrite(host, metaNone); err != nil {
			return false, err
		}
		return true, img.writeHost(p, host+off&(img.cs-1))
	}
	if len(p) > 0 && off>>img.cb == (off+int64(len(p))-1)>>img.cb {
		// One cluster: no walk.
		m, err := img.lookup(off >> img.cb)
		if err != nil || (m.kind != kindData && m.kind != kindSub) || !m.copied {
			return false, err
		}
		if m.kind == kindData {
			if err := img.checkMetaWrite(m.host, metaNone); err != nil {
				return false, err
			}
			_, err = img.f.WriteAt(p, m.host+off&(img.cs-1))
			return err == nil, err
		}
		// Subclusters: the walk below tells whether all are stored.
	}
	var runs []run
	err := img.walk(off, int64(len(p)), func(r run) error {
		if r.m.kind != kindData || !r.m.copied {
			return errNotInPlace
		}
		runs = append(runs, r)
		return nil
	})
	if errors.Is(err, errNotInPlace) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	for _, r := range runs {
		if err := img.checkDataRange(r.m.host, r.n); err != nil {
			return false, err
		}
		if _, err := img.f.WriteAt(p[r.off-off:r.off-off+r.n], r.m.host); err != nil {
			return false, err
		}
	}
	return true, nil
}

// checkDataRange verifies that no cluster in a host range holds metadata.
func (img *Image) checkDataRange(host, n int64) error {
	for c := host / img.cs; c < ceilDiv(host+n, img.cs); c++ {
		if err := img.checkMetaWrite(c*img.cs, metaNone); err != nil {
			return err
		}
	}
	return nil
}

// writeBatch collects the effects of one allocating operation so that they
// reach the file in a safe order: data, then (if a new cluster replaces
// content that was not zeros) a sync, then L2 entries, then hole punches.
type writeBatch struct {
	data     []hostWrite
	l2       []l2Update
	punch    []clusterRun
	frees    []int64
	needSync bool
	// mayDefer: the mappings may wait in the write journal (the
	// allocating write path). Other callers never journal: they may read
	// the L2 tables back from the file, and their entries (zero clusters,
	// compressed ones) are not what a replay accepts.
	mayDefer bool
	// pooled: buffers of data from clusterBuf, released once the data
	// is written.
	pooled [][]byte
}

type hostWrite struct {
	off int64
	buf []byte
}

type l2Update struct {
	vi     int64
	entry  uint64
	bitmap uint64 // extended L2 only
}

// writeLocked is the general write path for callers that hold mu
// exclusively throughout (lockQuiesced): it syncs under the lock.
func (img *Image) writeLocked(p []byte, off int64) error {
	w, err := img.planBatch(p, off)
	if err != nil {
		return err
	}
	return img.commit(&w)
}

// writeGrouped is WriteAt's allocating path, called with mu held
// exclusively and no allocation of these clusters in flight: a batch that
// needs its data durable before its L2 entries waits for that sync
// without mu, sharing it with other writers (group_commit.go).
func (img *Image) writeGrouped(p []byte, off int64) error {
	w, err := img.planBatch(p, off)
	if err != nil {
		return err
	}
	return img.commitGrouped(&w, off/img.cs, (off+int64(len(p))-1)/img.cs)
}

// commitGrouped commits w, a batch of allocations of guest clusters
// [first, last], as WriteAt does: called with mu held exclusively and none
// of those clusters in flight, it marks them in flight and waits for the
// data sync without mu when the mappings need one and the write journal
// does not take them.
func (img *Image) commitGrouped(w *writeBatch, first, last int64) error {
	w.mayDefer = true
	if !w.needSync || len(w.l2) == 0 || img.journalTakes(w) {
		// No sync to wait for, or the journal takes the mappings.
		return img.commit(w)
	}
	if err := img.commitData(w); err != nil {
		return err
	}
	ch := img.cowBegin(first, last)
	defer img.cowEnd(first, last, ch)
	img.mu.Unlock()
	err := img.syncs.sync(img.f)
	img.mu.Lock()
	if err != nil {
		return err
	}
	if err := img.writable(); err != nil {
		return err
	}
	return img.commitMapping(w, true)
}

// planBatch plans a write of p at off: the batch, its fresh clusters taken.
func (img *Image) planBatch(p []byte, off int64) (writeBatch, error) {
	var w writeBatch
	if err := img.markDirty(); err != nil {
		return w, err
	}
	n := int64(len(p))
	first, last := off/img.cs, (off+n-1)/img.cs
	if err := img.ensureReserved((last - first + 1) + (last/img.l2Entries - first/img.l2Entries + 1)); err != nil {
		return w, err
	}
	for vi := first; vi <= last; vi++ {
		start := vi * img.cs
		a, b := max(off, start), min(off+n, start+img.cs)
		if err := img.planWrite(&w, vi, a-start, p[a-off:b-off]); err != nil {
			return w, err
		}
	}
	return w, nil
}

// planWrite decides how chunk reaches guest cluster vi at offset in.
func (img *Image) planWrite(w *writeBatch, vi, in int64, chunk []byte) error {
	if _, err := img.prepareL2(vi / img.l2Entries); err != nil {
		return err
	}
	m, err := img.lookup(vi)
	if err != nil {
		return err
	}
	if img.ext && m.kind != kindCompressed {
		return img.planWriteExt(w, vi, in, chunk, m)
	}
	switch {
	case m.kind == kindData && m.copied:
		if err := img.checkDataRange(m.host, img.cs); err != nil {
			return err
		}
		w.data = append(w.data, hostWrite{m.host + in, chunk})
		return nil
	case m.kind == kindZero && m.copied && m.host != 0:
		// Preallocated zero cluster: fill it and clear the zero flag.
		if err := img.checkDataRange(m.host, img.cs); err != nil {
			return err
		}
		buf := make([]byte, img.cs)
		copy(buf[in:], chunk)
		w.data = append(w.data, hostWrite{m.host, buf})
		w.l2 = append(w.l2, l2Update{vi, uint64(m.host) | oflagCopied, 0})
		// The cluster may still hold what it had before it was zeroed.
		w.needSync = true
		return nil
	}
	full := in == 0 && int64(len(chunk)) == img.cs
	old, oldNonZero, err := img.oldContent(vi, m, full)
	if err != nil {
		return err
	}
	host, err := img.takeFreshCluster()
	if err != nil {
		return err
	}
	if old == nil {
		// The new cluster reads as zeros already: write only the chunk.
		w.data = append(w.data, hostWrite{host + in, chunk})
	} else {
		copy(old[in:], chunk)
		w.data = append(w.data, hostWrite{host, old})
		w.pooled = append(w.pooled, old)
	}
	w.needSync = w.needSync || oldNonZero
	w.l2 = append(w.l2, l2Update{vi, uint64(host) | oflagCopied, img.allocBitmap()})
	img.unlink(w, m, false)
	return nil
}

// takeFreshCluster takes a cluster from the pool (it reads as zeros) and
// returns its host offset, checked to hold no metadata.
func (img *Image) takeFreshCluster() (int64, error) {
	c, err := img.takeCluster()
	if err != nil {
		return 0, err
	}
	host := c * img.cs
	return host, img.checkDataRange(host, img.cs)
}

// oldContent returns what guest cluster vi holds now, when a partial write
// must preserve it (nil: zeros), and whether that content is non-zero (a
// new cluster replacing it must then be durable before its L2 entry).
func (img *Image) oldContent(vi int64, m mapping, full bool) ([]byte, bool, error) {
	start := vi * img.cs
	var old []byte
	switch m.kind {
	case kindZero:
		return nil, false, nil
	case kindUnallocated:
		if img.backing == nil {
			return nil, false, nil
		}
		if full {
			zero, err := diskIsZero(img.backing, start, img.cs)
			return nil, !zero, err
		}
		old = img.clusterBuf()
		if err := readDisk(img.backing, old, start); err != nil {
			return nil, false, err
		}
	case kindData:
		if full {
			return nil, true, nil
		}
		old = img.clusterBuf()
		if err := readFull(img.f, old, m.host); err != nil {
			return nil, false, err
		}
	case kindCompressed:
		if full {
			return nil, true, nil
		}
		var err error
		if old, err = img.readCompressed(m.raw); err != nil {
			return nil, false, err
		}
	}
	if isZero(old) {
		img.releaseClusterBuf(old)
		return nil, false, nil
	}
	return old, true, nil
}

// clusterBuf returns a cluster-sized buffer for copy-on-write, with any
// content: callers fill all of it. A 64 KiB allocation (zeroed, then
// collected) per copy-on-write write costs more than the copy itself.
func (img *Image) clusterBuf() []byte {
	if b, ok := img.cowBufs.Get().(*[]byte); ok && int64(len(*b)) == img.cs {
		return *b
	}
	return make([]byte, img.cs)
}

// releaseClusterBuf returns a buffer from clusterBuf once nothing refers
// to it any more.
func (img *Image) releaseClusterBuf(b []byte) {
	if int64(len(b)) == img.cs {
		img.cowBufs.Put(&b)
	}
}

// unlink schedules the release of the host clusters a replaced mapping
// used. Exclusively owned data clusters are punched when punch is set, so
// the space returns to the host at once.
func (img *Image) unlink(w *writeBatch, m mapping, punch bool) {
	switch {
	case m.kind == kindCompressed:
		off, n := img.compressedLocation(m.raw)
		for c := off / img.cs; c < ceilDiv(off+n, img.cs); c++ {
			w.frees = append(w.frees, c)
		}
	case m.host != 0:
		w.frees = append(w.frees, m.host/img.cs)
		if punch && m.copied {
			w.punch = append(w.punch, clusterRun{m.host / img.cs, 1})
		}
	}
}

// prepareL2 makes the L2 table for L1 index l1i exist and be owned by this
// image alone, and returns its offset.
func (img *Image) prepareL2(l1i int64) (int64, error) {
	if l1i >= int64(len(img.l1)) {
		return 0, errorf(ErrInvalid, "L1 index %d beyond the L1 table", l1i)
	}
	cur, err := img.l2Offset(l1i)
	if err != nil {
		return 0, err
	}
	if cur != 0 && img.l1[l1i]&oflagCopied != 0 {
		return cur, nil
	}
	host, err := img.takeFreshCluster()
	if err != nil {
		return 0, err
	}
	c := host / img.cs
	if cur != 0 {
		// Shared with a snapshot: copy it, durably, before linking the copy.
		buf := make([]byte, img.cs)
		if err := readFull(img.f, buf, cur); err != nil {
			return 0, err
		}
		if _, err := img.f.WriteAt(buf, host); err != nil {
			return 0, err
		}
		if err := img.f.Sync(); err != nil {
			return 0, err
		}
	}
	img.meta.add(c, metaL2)
	entryOff := int64(img.hdr.L1TableOffset) + l1i*8
	if err := img.checkMetaWrite(entryOff, metaL1); err != nil {
		return 0, err
	}
	if err := img.writeU64(entryOff, uint64(host)|oflagCopied); err != nil {
		return 0, err
	}
	img.l1[l1i] = uint64(host) | oflagCopied
	if cur != 0 {
		// Only now is the shared table unlinked: queued before a failed
		// L1 write, its free would drop the refcount the snapshot holds.
		img.alloc.freeLater(cur / img.cs)
		img.l2c.drop(cur, img.cs)
	}
	return host, nil
}

// commit writes a batch in the safe order.
func (img *Image) commit(w *writeBatch) error {
	if err := img.commitData(w); err != nil {
		return err
	}
	return img.commitMapping(w, false)
}

// commitData writes a batch's data, adjacent pieces joined.
func (img *Image) commitData(w *writeBatch) error {
	defer func() {
		for _, b := range w.pooled {
			img.releaseClusterBuf(b)
		}
		w.pooled = nil
	}()
	slices.SortFunc(w.data, func(a, b hostWrite) int { return cmp.Compare(a.off, b.off) })
	for i := 0; i < len(w.data); {
		j, end := i+1, w.data[i].off+int64(len(w.data[i].buf))
		buf := w.data[i].buf
		copied := false
		for j < len(w.data) && w.data[j].off == end {
			next := w.data[j].buf
			if joined, ok := joinAdjacent(buf, next); ok && !copied {
				// Consecutive pieces of the caller's buffer: no copy.
				buf = joined
			} else {
				if !copied {
					buf = append(make([]byte, 0, len(buf)+len(next)), buf...)
					copied = true
				}
				buf = append(buf, next...)
			}
			end += int64(len(next))
			j++
		}
		if _, err := img.f.WriteAt(buf, w.data[i].off); err != nil {
			return err
		}
		i = j
	}
	return nil
}

// commitMapping makes a batch's L2 entries reach the image, its data
// written already, then punches and frees; synced says that the data was
// synced since. It is the one way a batch's mappings are written, and it
// keeps two rules by construction:
//
//   - the image's L2 tables never name data that is not durable (rule 3):
//     an entry whose data must be durable first (needSync) goes to the
//     write journal when it can take it, else waits for a sync;
//   - an entry of an L2 slice that has journal-only entries goes to the
//     journal too, after them, whether or not its data needs a sync.
//     Written to the image instead, it would carry the journal-only
//     state of its slice (the allocation bits of other subclusters in the
//     same entry, on extended L2) onto the disk before that data is
//     durable; and a replay of the journal after a kill would apply the
//     older records over it.
func (img *Image) commitMapping(w *writeBatch, synced bool) error {
	if err := img.mapBatch(w, synced); err != nil {
		return err
	}
	for _, p := range mergeRuns(w.punch) {
		if err := img.f.PunchHole(p.start*img.cs, p.n*img.cs); err != nil {
			return err
		}
	}
	for _, c := range w.frees {
		img.alloc.freeLater(c)
	}
	return nil
}

// mapBatch writes w's L2 entries as commitMapping says.
func (img *Image) mapBatch(w *writeBatch, synced bool) error {
	if len(w.l2) == 0 {
		return nil
	}
	pinned := img.jr.pinsAny(w.l2, img.sliceBits)
	durable := synced || !w.needSync
	switch {
	case w.mayDefer && img.journalTakes(w) && (pinned || !durable):
		return img.deferMappings(w.l2)
	case pinned:
		// The batch may not wait in the journal (a caller outside the
		// write path, or punches that must follow a durable mapping):
		// a checkpoint moves the journal's entries into the image,
		// after a sync that covers this batch's data.
		if err := img.checkpointLocked(); err != nil {
			return err
		}
	case !durable:
		if err := img.f.Sync(); err != nil {
			return err
		}
	}
	return img.writeL2(w.l2)
}

// journalTakes reports whether the write journal can take w's mappings:
// it is on, the image has a field for its bit (version 3; a version 2
// image after an amend has none), and w punches no holes (a punch must
// follow a durable unmapping). The frees wait for a Flush, which
// checkpoints before it applies them.
func (img *Image) journalTakes(w *writeBatch) bool {
	return img.jr.on() && img.hdr.Version >= 3 && len(w.punch) == 0
}

// writeL2 applies L2 entry updates, one write per touched slice.
func (img *Image) writeL2(ups []l2Update) error {
	slices.SortFunc(ups, func(a, b l2Update) int { return cmp.Compare(a.vi, b.vi) })
	for i := 0; i < len(ups); {
		vi := ups[i].vi
		l2off, err := img.l2Offset(vi / img.l2Entries)
		if err != nil {
			return err
		}
		if l2off == 0 || img.l1[vi/img.l2Entries]&oflagCopied == 0 {
			return img.corruption("L2 table for cluster %d vanished during a write", vi)
		}
		buf, sliceOff, err := img.l2Slice(l2off, vi)
		if err != nil {
			return err
		}
		if err := img.checkMetaWrite(sliceOff, metaL2); err != nil {
			return err
		}
		sliceFirst := vi - vi%img.sliceEntries
		// One write per run of adjacent entries: an entry between two
		// runs may be in the journal only (journal.go), and must not
		// reach the image before its checkpoint.
		inSlice := func(vi int64) bool { return vi >= sliceFirst && vi-sliceFirst < img.sliceEntries }
		for i < len(ups) && inSlice(ups[i].vi) {
			lo := ups[i].vi - sliceFirst
			hi := lo
			for ; i < len(ups) && inSlice(ups[i].vi) && ups[i].vi-sliceFirst <= hi; i++ {
				k := ups[i].vi - sliceFirst
				img.forgetMirror(ups[i].vi)
				img.putEntry(buf, k, ups[i].entry, ups[i].bitmap)
				hi = max(hi, k+1)
			}
			if _, err := img.f.WriteAt(buf[lo*img.l2es:hi*img.l2es], sliceOff+lo*img.l2es); err != nil {
				img.dropSliceAfterFailedWrite(sliceOff, buf, err)
				return err
			}
		}
	}
	return nil
}

// joinAdjacent returns a and b as one slice when b directly follows a in
// the same backing array.
func joinAdjacent(a, b []byte) ([]byte, bool) {
	if len(a) == 0 || len(b) == 0 || cap(a)-len(a) < len(b) {
		return nil, false
	}
	joined := a[:len(a)+len(b)]
	if &joined[len(a)] != &b[0] {
		return nil, false
	}
	return joined, true
}

// mergeRuns sorts cluster runs and joins adjacent ones.
func mergeRuns(runs []clusterRun) []clusterRun {
	slices.SortFunc(runs, func(a, b clusterRun) int { return cmp.Compare(a.start, b.start) })
	var out []clusterRun
	for _, r := range runs {
		if n := len(out); n > 0 && out[n-1].start+out[n-1].n == r.start {
			out[n-1].n += r.n
			continue
		}
		out = append(out, r)
	}
	return out
}
