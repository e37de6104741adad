package qcow2

import (
	"errors"
	"fmt"
	"sync/atomic"
)

// The engine maintains persistent dirty bitmaps the way QEMU does
// (block/qcow2-bitmap.c): a writable open loads every enabled ('auto')
// consistent bitmap into memory and marks it in use on disk, durably,
// before any guest write; guest writes, zeroes and discards set bits in
// memory; Close writes the bitmaps to fresh clusters, points the header at
// a new directory with the in-use flags cleared, and frees the old
// clusters. A crash in between leaves the bitmaps marked in use, which
// QEMU and this engine both treat as inconsistent (kept, never used).
// Disabled bitmaps and bitmaps already in use are preserved unchanged.

// maxBitmapMemory bounds the bitmaps a writable open loads into memory
// (the sum over all enabled bitmaps; QEMU bounds each at maxBitmapPhys).
const maxBitmapMemory = maxBitmapPhys

// bitmapState is an image's persistent bitmaps. Everything but live is
// guarded by the image's mu.
type bitmapState struct {
	ext     *bitmapExtHeader // the extension on disk; nil: none this engine uses
	entries []bitmapEntry    // the directory on disk
	err     error            // why the directory could not be used (read-only opens)
	mem     []*liveBitmap    // bitmaps held in memory, stored by Close
	live    atomic.Pointer[liveSet]
	// markPending: the bitmaps are tracked in memory but not yet marked in
	// use on disk (an undone Freeze failed to): the next write marks them
	// first (Image.writable).
	markPending atomic.Bool
}

// Bitmap errors.
var (
	// ErrBitmapNotFound: no persistent bitmap has the given name.
	ErrBitmapNotFound = errors.New("bitmap not found")
	// ErrBitmapExists: a persistent bitmap with the given name exists.
	ErrBitmapExists = errors.New("bitmap already exists")
)

// BitmapInfo describes one persistent bitmap, as qemu-img info lists it.
type BitmapInfo struct {
	Name        string
	Granularity int64
	// InUse: the bitmap was not stored cleanly (it is being maintained by
	// an open writer, or one crashed): its content is not to be trusted.
	InUse bool
	// Auto: the bitmap is enabled (guest writes are recorded in it).
	Auto bool
}

// Flags returns the flags as qemu-img info names them.
func (b BitmapInfo) Flags() []string {
	var f []string
	if b.InUse {
		f = append(f, "in-use")
	}
	if b.Auto {
		f = append(f, "auto")
	}
	return f
}

// Bitmaps lists the image's persistent bitmaps as stored on disk.
func (img *Image) Bitmaps() ([]BitmapInfo, error) {
	img.mu.RLock()
	defer img.mu.RUnlock()
	return img.bitmapInfosLocked()
}

func (img *Image) bitmapInfosLocked() ([]BitmapInfo, error) {
	if img.bm.err != nil {
		return nil, img.bm.err
	}
	out := make([]BitmapInfo, 0, len(img.bm.entries))
	for _, e := range img.bm.entries {
		out = append(out, BitmapInfo{Name: e.name, Granularity: int64(1) << e.granBits, InUse: e.inUse(), Auto: e.enabled()})
	}
	return out, nil
}

// bitmapsPresent reports whether the image's header names bitmaps that the
// engine is to consider: a version 3 image with the extension and the
// autoclear bit that says it is consistent.
func bitmapsPresent(h *Header) bool {
	return h.Version >= 3 && h.Bitmaps != nil && h.AutoclearFeatures&autoclearBitmaps != 0
}

// openBitmaps reads the bitmap directory; on a writable image it loads the
// enabled bitmaps, marks them in use on disk and clears the autoclear bits
// the engine does not maintain. It runs after loadTables.
func (img *Image) openBitmaps() error {
	h := img.hdr
	keep := uint64(0)
	if bitmapsPresent(h) {
		err := img.readBitmaps()
		switch {
		case errors.Is(err, ErrLimit):
			return err
		case err != nil && img.readOnly:
			img.bm.err = err
		case err != nil:
			// Not usable (dropUnmaintainableBitmaps handled the readable
			// but unmaintainable case): stop claiming it is consistent.
		default:
			keep = autoclearBitmaps
		}
	}
	if img.readOnly {
		return nil
	}
	if keep != 0 {
		if err := img.loadEnabledBitmaps(); err != nil {
			if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrUnsupported) {
				return err
			}
			// A damaged table or data beyond the memory bound: QEMU
			// refuses the image; the spec's rule keeps it usable.
			keep = 0
		}
	}
	if keep == 0 {
		img.dropBitmapState()
	}
	// The spec requires the bits of features this engine does not maintain
	// to be cleared before it writes anything.
	return img.storeAutoclear(keep)
}

// dropBitmapState forgets the bitmaps (their clusters stay allocated, to
// be reclaimed as leaks by a repair).
func (img *Image) dropBitmapState() {
	img.bm.ext, img.bm.entries, img.bm.mem = nil, nil, nil
	img.bm.live.Store(nil)
	for c, k := range img.meta.m {
		if k == metaBitmaps {
			img.meta.remove(c)
		}
	}
}

// readBitmaps decodes the extension and the directory and records their
// clusters as metadata.
func (img *Image) readBitmaps() error {
	x, err := decodeBitmapExt(img.hdr.Bitmaps, img.cs)
	if err != nil {
		return err
	}
	entries, err := readBitmapDir(img.f, x, img.cs, uint64(img.size)&^511)
	if err != nil {
		return err
	}
	for i := range entries {
		if !entries[i].maintainable() && !img.readOnly {
			return errorf(ErrUnsupported, "bitmap %q has a type, flags or extra data this engine does not know", entries[i].name)
		}
	}
	regions := [][2]uint64{{x.dirOff, x.dirSize}}
	for _, e := range entries {
		regions = append(regions, [2]uint64{e.tableOff, uint64(e.tableSize) * 8})
	}
	// Checking and recording the regions goes cluster by cluster: charge
	// that first, so that many bitmaps naming one big table cannot cost
	// unbounded time.
	var clusters int64
	for _, r := range regions {
		clusters += ceilDiv(int64(r[1]), img.cs) + 1
	}
	if err := img.chargeOpen(costBitmaps, clusters*metaEntryBytes); err != nil {
		return err
	}
	for _, r := range regions {
		if err := img.checkBitmapRegion(r[0], r[1]); err != nil {
			return err
		}
	}
	for _, r := range regions {
		img.meta.addRange(int64(r[0]), int64(r[1]), img.cs, metaBitmaps)
	}
	img.bm.ext, img.bm.entries = &x, entries
	return nil
}

// checkBitmapRegion checks that a bitmap structure lies in the file and
// overlaps no metadata but other bitmap structures.
func (img *Image) checkBitmapRegion(off, n uint64) error {
	fsize, err := img.f.Size()
	if err != nil {
		return err
	}
	if off > uint64(fsize) || n > uint64(fsize)-off {
		return errorf(ErrInvalid, "bitmap structure at %#x (+%d bytes) is beyond the end of the file", off, n)
	}
	for c := int64(off) / img.cs; c < ceilDiv(int64(off+n), img.cs); c++ {
		if k := img.meta.kind(c); k != metaNone && k != metaBitmaps {
			return errorf(ErrInvalid, "bitmap structure at %#x overlaps the %s", off, k)
		}
	}
	return nil
}

// loadEnabledBitmaps loads every enabled bitmap that is not in use and
// marks it in use on disk, durably: from here on a crash leaves it
// inconsistent, as it must, since guest writes are only recorded in memory.
func (img *Image) loadEnabledBitmaps() error {
	var total int64
	for i := range img.bm.entries {
		e := &img.bm.entries[i]
		if !e.enabled() || e.inUse() {
			continue
		}
		need := ceilDiv(img.size, int64(1)<<e.granBits) / 8
		total += need
		if total > maxBitmapMemory {
			return errorf(ErrUnsupported, "the enabled bitmaps need more than %d bytes of memory", maxBitmapMemory)
		}
		if err := img.chargeOpen(costBitmaps, need+int64(e.tableSize)*8); err != nil {
			return err
		}
		b, err := img.readBitmapData(e, true)
		if err != nil {
			return err
		}
		img.bm.mem = append(img.bm.mem, b)
	}
	if len(img.bm.mem) == 0 {
		return nil
	}
	if err := img.setInUse(img.bm.mem); err != nil {
		return err
	}
	img.publishLive()
	return nil
}

// setInUse sets the in-use flag of the entries of bitmaps in place and
// makes that durable. Only flag bits change, and each changes in one
// byte, so a torn write leaves every entry either as it was or in use.
func (img *Image) setInUse(bms []*liveBitmap) error {
	var set []*bitmapEntry
	for _, b := range bms {
		if e := img.bm.entry(b.name); e != nil && !e.inUse() {
			e.flags |= bmeFlagInUse
			set = append(set, e)
		}
	}
	if len(set) == 0 {
		return nil
	}
	if err := img.writeDirInPlace(); err != nil {
		// The directory in memory says what the disk does: a retry
		// must write the flags again.
		for _, e := range set {
			e.flags &^= bmeFlagInUse
		}
		return err
	}
	return nil
}

func (s *bitmapState) entry(name string) *bitmapEntry {
	for i := range s.entries {
		if s.entries[i].name == name {
			return &s.entries[i]
		}
	}
	return nil
}

func (s *bitmapState) memBitmap(name string) *liveBitmap {
	for _, b := range s.mem {
		if b.name == name {
			return b
		}
	}
	return nil
}

// readBitmapTable reads and validates a bitmap table (QEMU's
// bitmap_table_load and check_table_entry).
func (img *Image) readBitmapTable(e *bitmapEntry) ([]uint64, error) {
	t := make([]uint64, e.tableSize)
	if err := img.readU64s(t, int64(e.tableOff)); err != nil {
		return nil, fmt.Errorf("reading the table of bitmap %q: %w", e.name, err)
	}
	fsize, err := img.f.Size()
	if err != nil {
		return nil, err
	}
	for i, v := range t {
		off := v & bmeOffsetMask
		switch {
		case v&bmeReservedMask != 0:
			return nil, errorf(ErrInvalid, "bitmap %q: table entry %d has reserved bits set (%#x)", e.name, i, v)
		case off == 0:
		case v&bmeFlagAllOnes != 0 || off%uint64(img.cs) != 0:
			return nil, errorf(ErrInvalid, "bitmap %q: table entry %d invalid (%#x)", e.name, i, v)
		case int64(off) > fsize-img.cs:
			return nil, errorf(ErrInvalid, "bitmap %q: data cluster %#x is beyond the end of the file", e.name, off)
		}
	}
	return t, nil
}

// readBitmapData loads a bitmap's bits from disk; with record, its data
// clusters are recorded as metadata (a writer is going to maintain it).
func (img *Image) readBitmapData(e *bitmapEntry, record bool) (*liveBitmap, error) {
	if want := bitmapTableClusters(uint64(img.size), e.granBits, img.cs); want != uint64(e.tableSize) {
		return nil, errorf(ErrInvalid, "bitmap %q: table has %d entries, the virtual size needs %d", e.name, e.tableSize, want)
	}
	t, err := img.readBitmapTable(e)
	if err != nil {
		return nil, err
	}
	b := newLiveBitmap(e.name, e.granBits, e.enabled(), img.size)
	buf := make([]byte, img.cs)
	for k, v := range t {
		off := v & bmeOffsetMask
		switch {
		case off != 0:
			if err := img.checkBitmapRegion(off, uint64(img.cs)); err != nil {
				return nil, err
			}
			if record {
				img.meta.add(int64(off)/img.cs, metaBitmaps)
			}
			if err := readFull(img.f, buf, int64(off)); err != nil {
				return nil, err
			}
			b.loadCluster(int64(k), buf)
		case v&bmeFlagAllOnes != 0:
			b.fillCluster(int64(k), img.cs)
		}
	}
	return b, nil
}

// bitmapClusters returns the clusters a stored bitmap's table and data
// occupy, for freeing them; it fails if one of them holds other metadata
// (the caller then leaks them rather than free what it cannot trust).
func (img *Image) bitmapClusters(e *bitmapEntry) ([]int64, error) {
	t, err := img.readBitmapTable(e)
	if err != nil {
		return nil, err
	}
	var out []int64
	for c := int64(e.tableOff) / img.cs; c < ceilDiv(int64(e.tableOff)+int64(e.tableSize)*8, img.cs); c++ {
		out = append(out, c)
	}
	for _, v := range t {
		if off := v & bmeOffsetMask; off != 0 {
			out = append(out, int64(off)/img.cs)
		}
	}
	for _, c := range out {
		if err := img.checkBitmapRegion(uint64(c*img.cs), uint64(img.cs)); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// BitmapDirty returns the guest ranges a bitmap records as changed, merged
// and in order, as [offset, length] pairs. A bitmap in use is refused: its
// content is not to be trusted.
func (img *Image) BitmapDirty(name string) ([][2]int64, error) {
	img.mu.RLock()
	defer img.mu.RUnlock()
	b := img.bm.memBitmap(name)
	if b == nil {
		e := img.bm.entry(name)
		if e == nil {
			return nil, fmt.Errorf("%w: %q", ErrBitmapNotFound, name)
		}
		if e.inUse() {
			return nil, errorf(ErrInvalid, "bitmap %q is inconsistent (in use)", name)
		}
		var err error
		if b, err = img.readBitmapData(e, false); err != nil {
			return nil, err
		}
	}
	return b.ranges(img.size), nil
}

// ranges returns the set bits as merged guest byte ranges.
func (b *liveBitmap) ranges(size int64) [][2]int64 {
	var out [][2]int64
	g := int64(1) << b.granBits
	for i := int64(0); i < b.nbits; i++ {
		w := atomic.LoadUint64(&b.words[i/64])
		if w == 0 {
			i |= 63
			continue
		}
		if w>>(i%64)&1 == 0 {
			continue
		}
		start := i * g
		end := min(start+g, size)
		if n := len(out); n > 0 && out[n-1][0]+out[n-1][1] == start {
			out[n-1][1] = end - out[n-1][0]
		} else {
			out = append(out, [2]int64{start, end - start})
		}
	}
	return out
}
