package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"sync"
	"sync/atomic"
)

// The write journal: copy-on-write without a sync per write.
//
// A write that gives a guest cluster a new host cluster in place of content
// that is not zeros (a copy-on-write from the backing file, say) must not
// let the new L2 entry reach the disk before the new cluster's data:
// after a power failure the guest would read zeros where a completed flush
// had left data. Without the journal that costs an fdatasync per such write
// (group commit shares it, group_commit.go). With it:
//
//  1. the data is pwritten to the fresh cluster, as before;
//  2. the new L2 entry is pwritten to the journal, a file beside the image
//     (IMAGE.journal), and put into the cached L2 slice, which stays
//     pinned in memory (journal.slices) but is not written to the image;
//  3. the write returns. Rule 1 holds: the mapping is in the kernel's page
//     cache (the journal), so a killed process loses nothing.
//
// A checkpoint (every Flush, before any other metadata operation, and when
// the journal fills) syncs the image, so the data is durable, writes the
// pinned slices to the image, syncs again, and empties the journal. So the
// image's own L2 tables never point at data that is not durable, which is
// what rule 3 needs: a power failure leaves the image as the last
// checkpoint left it plus safe, independent changes (fresh clusters
// leaked at worst).
//
// At open, a journal that still holds entries (the incompatible feature
// bit incompatJournal says so; QEMU refuses such an image) is replayed only
// if it was written since the host last booted: then the process was
// killed, the page cache survived, and every byte the journal maps is in
// the file as the dead process left it. After a reboot the journal may
// name clusters whose data never reached the disk, so it is discarded:
// every cluster it mapped reads as it did at the last checkpoint, which is
// the last Flush or earlier — the writes since were not flushed. The boot
// is told by /proc/sys/kernel/random/boot_id, which the journal header
// records.
//
// The journal never needs to be durable itself: after a power failure it
// is discarded anyway. It is only valid for images on a local file system
// whose page cache is this host's (the node-local store).

const (
	journalMagic      = "CQ2JRNL\x01"
	journalHeaderSize = 4096
	journalRecordSize = 40
	// journalMaxRecords bounds the journal (10 MiB) and the work of a
	// replay; a full journal is checkpointed.
	journalMaxRecords = 1 << 18
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrJournalPending: the image has mappings in a write journal that has
// not been applied (the process that wrote it was killed).
var ErrJournalPending = errors.New("the image has an unapplied csi-qcow2 write journal")

// journal is the state of an image's write journal. All fields are guarded
// by Image.mu held exclusively, except slices, which readers holding mu
// shared also use (an L2 cache miss, overlayPinned): they take slicesMu.
type journal struct {
	slicesMu sync.Mutex
	file     File   // the journal file, owned: closed at Close (nil: none)
	path     string // where Open opened it: removed at a clean Close
	f        File   // file when writes use it; nil: copy-on-write syncs instead
	boot     [16]byte
	gen      uint64 // generation of the records being written
	n        int64  // records in this generation
	// slices holds the L2 slices with entries that are in the journal
	// only, by slice offset: the cached bytes, which also hold them.
	slices map[int64][]byte
	// guest: the guest slice numbers (vi >> sliceBits) of those entries.
	guest map[int64]struct{}
	// maxSlices bounds the memory slices pins; more makes a checkpoint.
	maxSlices int
	// failed is a failed checkpoint: the image takes no more writes. It
	// is atomic because writable reads it without mu.
	failed atomic.Pointer[error]
}

// on reports whether writes may defer their mappings to the journal.
func (j *journal) on() bool { return j.f != nil && j.failed.Load() == nil }

// err returns the failure that stopped writes, if any.
func (j *journal) err() error {
	if p := j.failed.Load(); p != nil {
		return *p
	}
	return nil
}

// fail records the first failure that stops writes and returns it.
func (j *journal) fail(err error) error {
	j.failed.CompareAndSwap(nil, &err)
	return j.err()
}

// pending reports whether mappings live in the journal only.
func (j *journal) pending() bool { return len(j.slices) > 0 }

// pinsGuest reports whether entries of guest slices [first, last] are in
// the journal only.
func (j *journal) pinsGuest(first, last int64) bool {
	if len(j.guest) == 0 {
		return false
	}
	if last-first >= int64(len(j.guest)) {
		for g := range j.guest {
			if g >= first && g <= last {
				return true
			}
		}
		return false
	}
	for g := first; g <= last; g++ {
		if _, ok := j.guest[g]; ok {
			return true
		}
	}
	return false
}

// pinsAny reports whether the journal holds entries of the L2 slice of
// any of ups (guest slice = vi >> sliceBits).
func (j *journal) pinsAny(ups []l2Update, sliceBits uint8) bool {
	if len(j.guest) == 0 {
		return false
	}
	for _, u := range ups {
		if _, ok := j.guest[u.vi>>sliceBits]; ok {
			return true
		}
	}
	return false
}

// journalRecord is one deferred L2 entry.
type journalRecord struct {
	vi, entry, bitmap uint64
}

func encodeJournalHeader(gen uint64, boot [16]byte) []byte {
	b := make([]byte, 64)
	copy(b, journalMagic)
	binary.BigEndian.PutUint64(b[8:], gen)
	copy(b[16:32], boot[:])
	binary.BigEndian.PutUint32(b[32:], journalRecordSize)
	binary.BigEndian.PutUint32(b[40:], crc32.Checksum(b[:40], castagnoli))
	return b
}

// decodeJournalHeader returns the generation and boot of a journal header;
// ok is false when it is not a valid header.
func decodeJournalHeader(b []byte) (gen uint64, boot [16]byte, ok bool) {
	if len(b) < 44 || string(b[:8]) != journalMagic ||
		binary.BigEndian.Uint32(b[32:]) != journalRecordSize ||
		binary.BigEndian.Uint32(b[40:]) != crc32.Checksum(b[:40], castagnoli) {
		return 0, boot, false
	}
	copy(boot[:], b[16:32])
	return binary.BigEndian.Uint64(b[8:]), boot, true
}

func encodeJournalRecord(dst []byte, gen uint64, r journalRecord) {
	binary.BigEndian.PutUint64(dst[0:], gen)
	binary.BigEndian.PutUint64(dst[8:], r.vi)
	binary.BigEndian.PutUint64(dst[16:], r.entry)
	binary.BigEndian.PutUint64(dst[24:], r.bitmap)
	binary.BigEndian.PutUint32(dst[32:], crc32.Checksum(dst[:32], castagnoli))
	binary.BigEndian.PutUint32(dst[36:], 0)
}

// decodeJournalRecord returns the record in b if it is intact and of
// generation gen.
func decodeJournalRecord(b []byte, gen uint64) (journalRecord, bool) {
	if binary.BigEndian.Uint64(b) != gen || binary.BigEndian.Uint32(b[32:]) != crc32.Checksum(b[:32], castagnoli) {
		return journalRecord{}, false
	}
	return journalRecord{
		vi:     binary.BigEndian.Uint64(b[8:]),
		entry:  binary.BigEndian.Uint64(b[16:]),
		bitmap: binary.BigEndian.Uint64(b[24:]),
	}, true
}

// startJournal attaches jf as the journal of a writable image whose
// journal holds nothing (replayed or discarded at open): the next records
// get a generation of their own.
func (img *Image) startJournal(jf File, boot [16]byte) error {
	gen, _, ok := readJournalHeader(jf)
	if !ok {
		gen = 0
	}
	gen++
	// Nothing in the file counts any more: drop the records, or, should
	// the header have been lost (poisoned after a failed sync), the
	// generations restart and old records would match the new ones.
	if err := jf.Truncate(journalHeaderSize); err != nil {
		return err
	}
	if _, err := jf.WriteAt(encodeJournalHeader(gen, boot), 0); err != nil {
		return err
	}
	img.jr.f, img.jr.boot, img.jr.gen, img.jr.n = jf, boot, gen, 0
	// As much as the L2 cache holds (a pinned slice evicted from the
	// cache stays in slices), and at least 1 MiB: a checkpoint costs two
	// syncs, so small disks must not make one every few writes.
	img.jr.maxSlices = max(img.l2c.limit, 256)
	return nil
}

// readJournalHeader reads the header of a journal file.
func readJournalHeader(jf File) (gen uint64, boot [16]byte, ok bool) {
	b := make([]byte, 64)
	if n, _ := jf.ReadAt(b, 0); n < len(b) {
		return 0, boot, false
	}
	return decodeJournalHeader(b)
}

// readJournalRecords returns the records of the journal's current
// generation, in the order they were written.
func readJournalRecords(jf File, gen uint64) ([]journalRecord, error) {
	var out []journalRecord
	buf := make([]byte, 1024*journalRecordSize)
	off := int64(journalHeaderSize)
	for int64(len(out)) < journalMaxRecords {
		n, err := jf.ReadAt(buf, off)
		n -= n % journalRecordSize
		for i := 0; i < n; i += journalRecordSize {
			r, ok := decodeJournalRecord(buf[i:i+journalRecordSize], gen)
			if !ok || int64(len(out)) >= journalMaxRecords {
				return out, nil
			}
			out = append(out, r)
		}
		if err != nil || n < len(buf) {
			return out, nil
		}
		off += int64(n)
	}
	return out, nil
}

// deferMappings is the journaled form of writeL2, for entries whose data
// is not durable yet: it appends them to the journal and puts them into
// the cached slices, pinned there until the next checkpoint. Called with
// mu held exclusively.
func (img *Image) deferMappings(ups []l2Update) error {
	if img.jr.n+int64(len(ups)) > journalMaxRecords || len(img.jr.slices) >= img.jr.maxSlices {
		// Full: a checkpoint syncs this batch's data too, so its
		// entries can go to the image directly.
		if err := img.checkpointLocked(); err != nil {
			return err
		}
		return img.writeL2(ups)
	}
	if v := img.hdrIncompat.Load(); v&incompatJournal == 0 {
		// No sync: a crash that loses the bit loses the journal's
		// entries with it, and only a power failure can lose it, after
		// which the journal is discarded anyway.
		if err := img.writeIncompat(v | incompatJournal); err != nil {
			return err
		}
	}
	buf := make([]byte, len(ups)*journalRecordSize)
	for i, u := range ups {
		encodeJournalRecord(buf[i*journalRecordSize:], img.jr.gen, journalRecord{uint64(u.vi), u.entry, u.bitmap})
	}
	if _, err := img.jr.f.WriteAt(buf, journalHeaderSize+img.jr.n*journalRecordSize); err != nil {
		// Some of the records may be in the file, valid, past jr.n: a
		// later batch would overwrite only the first of them, and a
		// replay would apply the rest over newer mappings.
		return img.jr.fail(fmt.Errorf("writing the write journal failed, the image takes no more writes: %w", err))
	}
	img.jr.n += int64(len(ups))
	if err := img.pinMappings(ups); err != nil {
		return img.jr.fail(fmt.Errorf("the write journal holds mappings the cache could not take, the image takes no more writes: %w", err))
	}
	return nil
}

// pinMappings puts L2 entries into their cached slices without writing
// the image, and pins those slices until the next checkpoint.
func (img *Image) pinMappings(ups []l2Update) error {
	if img.jr.slices == nil {
		img.jr.slicesMu.Lock()
		img.jr.slices = map[int64][]byte{}
		img.jr.slicesMu.Unlock()
		img.jr.guest = map[int64]struct{}{}
	}
	for _, u := range ups {
		l1i := u.vi >> img.l2Bits
		if l1i >= int64(len(img.l1)) {
			return errorf(ErrInvalid, "journal maps cluster %d beyond the L1 table", u.vi)
		}
		l2off, err := img.l2Offset(l1i)
		if err != nil {
			return err
		}
		if l2off == 0 {
			return img.corruptionOrInvalid("journal maps cluster %d, which has no L2 table", u.vi)
		}
		buf, sliceOff, err := img.l2Slice(l2off, u.vi)
		if err != nil {
			return err
		}
		img.forgetMirror(u.vi)
		img.putEntry(buf, u.vi&(img.sliceEntries-1), u.entry, u.bitmap)
		img.jr.slicesMu.Lock()
		img.jr.slices[sliceOff] = buf
		img.jr.slicesMu.Unlock()
		img.jr.guest[u.vi>>img.sliceBits] = struct{}{}
	}
	return nil
}

// pinnedSlice fills b with a pinned slice's bytes (an L2 cache miss on a
// slice that was evicted while it held journal-only entries) and makes b
// the pinned copy. Called under the L2 cache's lock.
func (img *Image) pinnedSlice(b []byte, sliceOff int64) bool {
	img.jr.slicesMu.Lock()
	defer img.jr.slicesMu.Unlock()
	p, ok := img.jr.slices[sliceOff]
	if !ok {
		return false
	}
	copy(b, p)
	img.jr.slices[sliceOff] = b
	return true
}

// checkpointLocked moves the journal's entries into the image: sync (their
// data becomes durable), write the pinned slices, sync, then empty the
// journal and clear the image's journal bit. Called with mu held
// exclusively and nothing in flight. A failure is sticky: the entries stay
// pinned (and journaled) and the image takes no more writes.
func (img *Image) checkpointLocked() error {
	if err := img.jr.err(); err != nil {
		return err
	}
	if !img.jr.pending() && img.hdrIncompat.Load()&incompatJournal == 0 {
		return nil
	}
	if err := img.checkpointSteps(); err != nil {
		return img.jr.fail(fmt.Errorf("checkpoint of the write journal failed, the image takes no more writes: %w", err))
	}
	return nil
}

func (img *Image) checkpointSteps() error {
	if len(img.jr.slices) > 0 {
		if err := img.f.Sync(); err != nil {
			return err
		}
		for off, buf := range img.jr.slices {
			if err := img.checkMetaWrite(off, metaL2); err != nil {
				return err
			}
			if _, err := img.f.WriteAt(buf, off); err != nil {
				return err
			}
		}
		if err := img.f.Sync(); err != nil {
			return err
		}
		img.jr.slicesMu.Lock()
		img.jr.slices = nil
		img.jr.slicesMu.Unlock()
		img.jr.guest = nil
	}
	if img.jr.f != nil {
		// A new generation: the records written so far stop counting.
		gen := img.jr.gen + 1
		if _, err := img.jr.f.WriteAt(encodeJournalHeader(gen, img.jr.boot), 0); err != nil {
			return err
		}
		img.jr.gen, img.jr.n = gen, 0
	}
	if v := img.hdrIncompat.Load(); v&incompatJournal != 0 {
		return img.writeIncompat(v &^ incompatJournal)
	}
	return nil
}

// overlayPinned copies the pinned slices of the L2 table at l2off over
// buf, a copy of that table read from the file.
func (img *Image) overlayPinned(buf []byte, l2off int64) {
	img.jr.slicesMu.Lock()
	defer img.jr.slicesMu.Unlock()
	for off, p := range img.jr.slices {
		if off >= l2off && off < l2off+int64(len(buf)) {
			copy(buf[off-l2off:], p)
		}
	}
}

// dropSliceAfterFailedWrite forgets cached bytes that a failed write left
// different from the file. A pinned slice cannot be forgotten (it holds
// journal-only entries too), so the image stops taking writes instead.
func (img *Image) dropSliceAfterFailedWrite(sliceOff int64, buf []byte, err error) {
	img.jr.slicesMu.Lock()
	_, pinned := img.jr.slices[sliceOff]
	img.jr.slicesMu.Unlock()
	if pinned {
		img.jr.fail(fmt.Errorf("an L2 write failed while the write journal held entries of the same table, the image takes no more writes: %w", err))
	}
	img.l2c.drop(sliceOff, int64(len(buf)))
}
