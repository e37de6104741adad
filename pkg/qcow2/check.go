package qcow2

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
)

// This file reproduces `qemu-img check` of QEMU 7.2 for qcow2
// (qcow2_co_check_locked and qcow2_check_refcounts): the same walk, the same
// classification of findings into check errors, corruptions and leaks, the
// same counts and fragmentation statistics, and the same repairs. The
// repairs that need new clusters (refcount structure rebuild, snapshot
// table rewrite) differ from QEMU's in placement only: see repair.go.

// fixFlags are QEMU's BdrvCheckMode bits.
type fixFlags uint8

const (
	fixLeaks  fixFlags = 1 // BDRV_FIX_LEAKS
	fixErrors fixFlags = 2 // BDRV_FIX_ERRORS
)

func (m RepairMode) flags() fixFlags {
	switch m {
	case RepairLeaks:
		return fixLeaks
	case RepairAll:
		return fixLeaks | fixErrors
	}
	return 0
}

// checkFragInfo asks checkL1/checkL2 to update the fragmentation counters
// (only for the active L1 table), like QEMU's CHECK_FRAG_INFO.
const checkFragInfo = 2

const (
	reftReservedMask = uint64(0x1ff)
	l2BitmapAllAlloc = uint64(1)<<32 - 1
	bmeOffsetMask    = uint64(0x00fffffffffffe00)
	bmeReservedMask  = uint64(0xff000000000001fe)
	bmeFlagAllOnes   = uint64(1)
	maxBitmaps       = 65535
	maxBitmapDirSize = 1024 * maxBitmaps
	bitmapDirEntLen  = 24
	maxBitmapTable   = 0x8000000
	maxBitmapPhys    = 0x20000000
	// maxCheckClusters is QEMU's INT_MAX bound on the clusters of the file.
	maxCheckClusters = math.MaxInt32
	errnoEIO         = "Input/output error"
)

// errCheckAborted marks a failure after which QEMU abandons the check
// (its functions return -errno): qemu-img then reports "Check failed" and
// exits 1.
var errCheckAborted = errors.New("check aborted")

type checkCounts struct {
	checkErrors, corruptions, leaks, corruptionsFixed, leaksFixed int
}

func (a *checkCounts) add(b checkCounts) {
	a.checkErrors += b.checkErrors
	a.corruptions += b.corruptions
	a.leaks += b.leaks
	a.corruptionsFixed += b.corruptionsFixed
	a.leaksFixed += b.leaksFixed
}

type fragInfo struct {
	total, allocated, fragmented, compressed int64
}

// bitmapInfo is the bitmaps header extension.
type bitmapInfo struct {
	n               uint32
	dirOff, dirSize uint64
}

// checker holds one check run over an image.
type checker struct {
	f        File
	h        *Header
	res      *CheckResult // receives Messages
	writable bool

	cs          int64
	cbits       uint32
	cmask       uint64
	order       uint32
	rbBits      uint32 // log2 of refcount entries per refcount block
	extL2       bool
	l2EntrySize int64
	l2Entries   int64
	dataFile    bool
	virtualSize uint64
	csizeShift  uint32
	csizeMask   uint64
	coffMask    uint64

	fileSize int64

	l1Off  uint64
	l1Size uint32
	l1     []uint64 // active L1 table as loaded at open

	rtOff      uint64
	rtClusters uint32
	rt         []uint64

	snapOff  uint64
	snapSize int64
	snaps    []snapshotEntry

	bm bitmapInfo

	chunk  []byte         // forEachU64's buffer
	l2buf  []byte         // one L2 table
	rbSlot [8]rbCacheSlot // refcount block cache
	rbNext int

	imrt       *refArray
	nbClusters int64
	// growLimit lets references reach up to this many bytes past the end
	// of the file (recorded in grownEnd) instead of counting as errors:
	// after a crash with lazy refcounts, the file may be shorter than what
	// L2 entries point at (the extension was not yet durable; the missing
	// clusters read as zeros). Only the refcount rebuild sets it.
	growLimit      int64
	grownEnd       int64
	imageEndOffset int64
	frag           fragInfo
	signaled       bool

	run    longRun
	walked int64 // L2 tables checked (progress)
	// stopped is the cancellation compareRefcounts met (it has no error
	// return); the caller returns it.
	stopped error
}

func (c *checker) logf(format string, args ...any) { c.res.logf(format, args...) }

// Check checks the qcow2 image at path like `qemu-img check`, repairing it
// as opts.Repair says. The file is opened read-only unless a repair is
// requested. An error is returned when the image cannot be opened as
// qcow2 at all (qemu-img check then exits 1 too); otherwise the findings are
// in the result.
func Check(path string, opts CheckOptions) (*CheckResult, error) {
	return CheckContext(context.Background(), path, opts)
}

// CheckContext is Check that stops when ctx is done (with ctx's error;
// repairs made so far stay, each is safe alone) and reports its progress
// to opts.Progress.
func CheckContext(ctx context.Context, path string, opts CheckOptions) (*CheckResult, error) {
	lopts := Options{ReadOnly: opts.Repair == RepairNone, ForceShare: opts.ForceShare}
	if err := checkLockOptions(lopts); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	flag := os.O_RDONLY
	if opts.Repair != RepairNone {
		flag = os.O_RDWR
		if err := applyPendingJournal(path); err != nil {
			return nil, err
		}
	}
	osf, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, err
	}
	f := &osFile{f: osf, canPunch: true}
	if err := f.setLock(lockModeFor(lopts)); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	res, err := CheckFileContext(ctx, f, opts)
	if cerr := f.Close(); err == nil && cerr != nil {
		return nil, cerr
	}
	if res != nil {
		res.Filename = path
	}
	return res, err
}

// CheckFile is Check on an open file; f must be writable when a repair is
// requested. Filename is left empty.
func CheckFile(f File, opts CheckOptions) (*CheckResult, error) {
	return CheckFileContext(context.Background(), f, opts)
}

// CheckFileContext is CheckFile with CheckContext's cancellation.
func CheckFileContext(ctx context.Context, f File, opts CheckOptions) (*CheckResult, error) {
	if opts.Repair < RepairNone || opts.Repair > RepairAll {
		return nil, fmt.Errorf("%w: repair mode %d", ErrInvalid, int(opts.Repair))
	}
	run := longRun{ctx: ctx, progress: opts.Progress}
	res, err := checkOnce(run, f, opts.Repair.flags())
	if err != nil {
		return nil, err
	}
	if opts.Repair != RepairNone && !res.failed && (res.CorruptionsFixed > 0 || res.LeaksFixed > 0) {
		// As qemu-img: report what a fresh check of the repaired image
		// finds, with the counts of what was fixed.
		again, err := checkOnce(run, f, 0)
		if err != nil {
			return nil, err
		}
		again.CorruptionsFixed, again.LeaksFixed = res.CorruptionsFixed, res.LeaksFixed
		msgs := append(res.Messages, again.Messages...)
		again.MessagesDropped += res.MessagesDropped
		if len(msgs) > maxCheckMessages {
			again.MessagesDropped += len(msgs) - maxCheckMessages
			msgs = msgs[:maxCheckMessages]
		}
		again.Messages = msgs
		return again, nil
	}
	return res, nil
}

// checkOnce is one qcow2_co_check_locked run.
func checkOnce(run longRun, f File, fix fixFlags) (*CheckResult, error) {
	res := &CheckResult{Format: "qcow2"}
	h, err := readCheckHeader(f)
	if err != nil {
		return nil, err
	}
	if h.IncompatibleFeatures&incompatJournal != 0 {
		// Its clusters would count as leaks, and a repair would free them.
		return nil, fmt.Errorf("%w (the process serving it was killed); a writable open applies it: `img check -r leaks` does", ErrJournalPending)
	}
	c := &checker{f: f, h: h, res: res, writable: fix != 0, run: run}
	if err := c.open(); err != nil {
		return nil, err
	}
	var total, snapCnt, refCnt checkCounts
	failed := c.checkReadSnapshotTable(&snapCnt, fix)
	if failed == nil {
		failed = c.checkRefcounts(&refCnt, fix)
		if cancelled(failed) {
			return nil, failed
		}
		total.add(refCnt)
		res.ImageEndOffset = c.imageEndOffset
		res.TotalClusters = c.frag.total
		res.AllocatedClusters = c.frag.allocated
		res.FragmentedClusters = c.frag.fragmented
		res.CompressedClusters = c.frag.compressed
		if failed == nil {
			failed = c.checkFixSnapshotTable(&snapCnt, fix)
		}
	}
	total.add(snapCnt)
	if failed == nil && fix != 0 && total.checkErrors == 0 && total.corruptions == 0 {
		if err := c.markCleanAndConsistent(); err != nil {
			failed = err
		}
	}
	if failed != nil {
		// qemu-img reports "Check failed" and exits 1 whatever the
		// counters say; keep that visible in the counters.
		if total.checkErrors == 0 {
			total.checkErrors = 1
		}
		if errors.Is(failed, errCheckAborted) {
			c.logf("Check failed")
		} else {
			c.logf("Check failed: %v", failed)
		}
		res.failed = true
	}
	res.CheckErrors = total.checkErrors
	res.Corruptions = total.corruptions
	res.Leaks = total.leaks
	res.CorruptionsFixed = total.corruptionsFixed
	res.LeaksFixed = total.leaksFixed
	return res, nil
}

// readCheckHeader reads and decodes cluster 0.
func readCheckHeader(f File) (*Header, error) {
	size, err := f.Size()
	if err != nil {
		return nil, err
	}
	n := min(size, int64(1)<<maxClusterBits)
	if n < 0 {
		n = 0
	}
	buf := make([]byte, n)
	if err := readFull(f, buf, 0); err != nil {
		return nil, err
	}
	if len(buf) >= 24 {
		if cb := binary.BigEndian.Uint32(buf[20:]); cb >= minClusterBits && cb <= maxClusterBits && int64(1)<<cb < int64(len(buf)) {
			buf = buf[:int64(1)<<cb]
		}
	}
	return parseHeader(buf)
}

// open performs the validation qcow2_do_open does in check mode and loads
// the active L1 table, the refcount table and the bitmaps extension.
func (c *checker) open() error {
	h := c.h
	c.cbits = h.ClusterBits
	c.cs = int64(1) << c.cbits
	c.cmask = uint64(c.cs - 1)
	c.order = h.RefcountOrder
	c.rbBits = c.cbits + 3 - c.order
	c.extL2 = h.IncompatibleFeatures&incompatExtendedL2 != 0
	c.l2EntrySize = 8
	if c.extL2 {
		c.l2EntrySize = 16
	}
	c.l2Entries = c.cs / c.l2EntrySize
	c.dataFile = h.IncompatibleFeatures&incompatDataFile != 0
	c.virtualSize = h.Size &^ 511
	c.csizeShift = 62 - (c.cbits - 8)
	c.csizeMask = uint64(1)<<(c.cbits-8) - 1
	c.coffMask = uint64(1)<<c.csizeShift - 1
	if err := c.refreshSize(); err != nil {
		return err
	}

	c.rtOff, c.rtClusters = h.RefcountTableOffset, h.RefcountTableClusters
	if err := validateTablePointer("reference count table", c.rtOff, uint64(c.rtClusters), uint64(c.cs), maxRefcountTableBytes, c.cs); err != nil {
		return err
	}
	c.l1Off, c.l1Size = h.L1TableOffset, h.L1Size
	if err := validateTablePointer("active L1 table", c.l1Off, uint64(c.l1Size), 8, maxL1Bytes, c.cs); err != nil {
		return err
	}
	need := (h.Size + uint64(c.cs*c.l2Entries) - 1) / uint64(c.cs*c.l2Entries)
	if need > math.MaxInt32 {
		return fmt.Errorf("%w: image is too big", ErrInvalid)
	}
	if uint64(c.l1Size) < need {
		return fmt.Errorf("%w: L1 table is too small (%d entries, %d needed)", ErrInvalid, c.l1Size, need)
	}
	var err error
	if c.l1, err = c.readTable(c.l1Off, int64(c.l1Size)); err != nil {
		return fmt.Errorf("could not read L1 table: %w", err)
	}
	if c.rt, err = c.readTable(c.rtOff, int64(c.rtClusters)*c.cs/8); err != nil {
		return fmt.Errorf("could not read the refcount table: %w", err)
	}
	return c.parseBitmapsExt()
}

func (c *checker) refreshSize() error {
	size, err := c.f.Size()
	if err != nil {
		return err
	}
	c.fileSize = size
	return nil
}

// parseBitmapsExt validates the bitmaps extension like qcow2_read_extensions.
func (c *checker) parseBitmapsExt() error {
	h := c.h
	if h.Bitmaps == nil {
		return nil
	}
	if h.AutoclearFeatures&autoclearBitmaps == 0 {
		c.logf("qemu-img: warning: a program lacking bitmap support modified this file, so all bitmaps are now considered inconsistent")
		return nil
	}
	b := h.Bitmaps
	if len(b) != 24 {
		return fmt.Errorf("%w: bitmaps_ext: invalid extension length", ErrInvalid)
	}
	be := binary.BigEndian
	if be.Uint32(b[4:]) != 0 {
		return fmt.Errorf("%w: bitmaps_ext: reserved field is not zero", ErrInvalid)
	}
	c.bm.n = be.Uint32(b[0:])
	c.bm.dirSize = be.Uint64(b[8:])
	c.bm.dirOff = be.Uint64(b[16:])
	switch {
	case c.bm.n > maxBitmaps:
		return fmt.Errorf("%w: bitmaps_ext: image has %d bitmaps, more than %d", ErrInvalid, c.bm.n, maxBitmaps)
	case c.bm.n == 0:
		return fmt.Errorf("%w: found bitmaps extension with zero bitmaps", ErrInvalid)
	case c.bm.dirOff&c.cmask != 0:
		return fmt.Errorf("%w: bitmaps_ext: invalid bitmap directory offset", ErrInvalid)
	case c.bm.dirSize > maxBitmapDirSize:
		return fmt.Errorf("%w: bitmaps_ext: bitmap directory size (%d) exceeds the maximum supported size (%d)", ErrInvalid, c.bm.dirSize, maxBitmapDirSize)
	}
	return nil
}

// readAt reads len(p) bytes at an offset taken from the image; bytes past
// the end of the file read as zeros.
func (c *checker) readAt(p []byte, off uint64) error {
	if off > math.MaxInt64-uint64(len(p)) {
		return fmt.Errorf("%w: offset %#x out of range", ErrInvalid, off)
	}
	return readFull(c.f, p, int64(off))
}

func (c *checker) writeAt(p []byte, off uint64) error {
	if !c.writable {
		return ErrReadOnly
	}
	if off > math.MaxInt64-uint64(len(p)) {
		return fmt.Errorf("%w: offset %#x out of range", ErrInvalid, off)
	}
	_, err := c.f.WriteAt(p, int64(off))
	return err
}

// readTable reads n big-endian 64-bit entries (n is bounded by the
// callers' limits).
func (c *checker) readTable(off uint64, n int64) ([]uint64, error) {
	if n == 0 {
		return nil, nil
	}
	t := make([]uint64, n)
	err := c.forEachU64(off, n, func(i int64, v uint64) error {
		t[i] = v
		return nil
	})
	if err != nil {
		return nil, err
	}
	return t, nil
}

// chunkBytes is the size of the reusable buffer tables are streamed
// through, so that walking many or large tables does not allocate.
const chunkBytes = 64 << 10

// forEachU64 streams n big-endian 64-bit entries at off through fn.
func (c *checker) forEachU64(off uint64, n int64, fn func(i int64, v uint64) error) error {
	if off > math.MaxInt64 || uint64(n) > (math.MaxInt64-off)/8 {
		return fmt.Errorf("%w: table at %#x out of range", ErrInvalid, off)
	}
	if c.chunk == nil {
		c.chunk = make([]byte, chunkBytes)
	}
	for i := int64(0); i < n; {
		k := min(n-i, chunkBytes/8)
		buf := c.chunk[:k*8]
		if err := c.readAt(buf, off+uint64(i)*8); err != nil {
			return err
		}
		for j := int64(0); j < k; j++ {
			if err := fn(i+j, binary.BigEndian.Uint64(buf[j*8:])); err != nil {
				return err
			}
		}
		i += k
	}
	return nil
}

// --- snapshot table -------------------------------------------------------

// checkReadSnapshotTable is qcow2_check_read_snapshot_table.
func (c *checker) checkReadSnapshotTable(cnt *checkCounts, fix fixFlags) error {
	n, off := c.h.NbSnapshots, c.h.SnapshotsOffset
	reduced := 0
	if n > maxSnapshots && fix&fixErrors != 0 {
		c.logf("Discarding %d overhanging snapshots", n-maxSnapshots)
		reduced += int(n - maxSnapshots)
		n = maxSnapshots
	}
	t, err := loadSnapshotTable(c.f, off, n, c.cs, c.virtualSize, fix&fixErrors != 0)
	if err != nil {
		cnt.checkErrors++
		c.logf("ERROR failed to read the snapshot table: %v", err)
		if n > maxSnapshots {
			c.logf("You can force-remove all %d overhanging snapshots with qemu-img check -r all", n-maxSnapshots)
		}
		return errCheckAborted
	}
	for _, note := range t.Notes {
		c.logf("%s", note)
	}
	reduced += t.Discarded
	c.snaps, c.snapOff, c.snapSize = t.Entries, t.Offset, t.Size
	cnt.corruptions += reduced + t.ExtraDropped
	if reduced > 0 {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(len(c.snaps)))
		if err := c.writeAt(b[:], hdrOffSnapshots); err == nil {
			err = c.f.Sync()
		}
		if err != nil {
			cnt.checkErrors++
			c.logf("ERROR failed to update the snapshot count in the image header: %v", err)
			return errCheckAborted
		}
		c.h.NbSnapshots = uint32(len(c.snaps))
		cnt.corruptionsFixed += reduced
		cnt.corruptions -= reduced
	}
	if c.h.Version >= 3 {
		for i := range c.snaps {
			if c.snaps[i].ExtraDataSize < snapshotMinV3Extra {
				cnt.corruptions++
				c.logf("%s snapshot table entry %d is incomplete", repairingOr(fix&fixErrors != 0, "ERROR"), i)
			}
		}
	}
	return nil
}

func repairingOr(repair bool, otherwise string) string {
	if repair {
		return "Repairing"
	}
	return otherwise
}

// --- refcount check -------------------------------------------------------

// checkRefcounts is qcow2_check_refcounts.
func (c *checker) checkRefcounts(cnt *checkCounts, fix fixFlags) error {
	c.nbClusters = ceilClusters(c.fileSize, c.cs)
	if c.nbClusters > maxCheckClusters {
		cnt.checkErrors++
		return fmt.Errorf("%w: file too large to check (%d clusters)", ErrInvalid, c.nbClusters)
	}
	c.frag.total = int64((c.virtualSize + uint64(c.cs) - 1) >> c.cbits)
	c.imrt = newRefArray(c.order, c.cs)
	rebuild := false
	if err := c.calculateRefcounts(cnt, fix, &rebuild, false); err != nil {
		return err
	}
	pre := *cnt
	var highest int64
	c.compareRefcounts(cnt, 0, &rebuild, &highest)
	if c.stopped != nil {
		return c.stopped
	}

	if rebuild && fix&fixErrors != 0 {
		old := *cnt
		fresh := 0
		c.logf("Rebuilding refcount structure")
		if err := c.rebuildRefcountStructure(); err != nil {
			cnt.checkErrors++
			c.logf("ERROR rebuilding refcount structure: %v", err)
			return err
		}
		cnt.corruptions, cnt.leaks = 0, 0
		rebuild = false
		c.imrt = newRefArray(c.order, c.cs)
		c.frag = fragInfo{total: c.frag.total}
		c.nbClusters = ceilClusters(c.fileSize, c.cs)
		if err := c.calculateRefcounts(cnt, 0, &rebuild, false); err != nil {
			return err
		}
		saved := *cnt
		*cnt = checkCounts{}
		c.compareRefcounts(cnt, fixLeaks, &rebuild, &highest)
		if c.stopped != nil {
			return c.stopped
		}
		if rebuild {
			c.logf("ERROR rebuilt refcount structure is still broken")
		}
		fresh = cnt.leaks
		*cnt = saved
		if cnt.corruptions < old.corruptions {
			cnt.corruptionsFixed += old.corruptions - cnt.corruptions
		}
		if cnt.leaks < old.leaks {
			cnt.leaksFixed += old.leaks - cnt.leaks
		}
		cnt.leaks += fresh
	} else if fix != 0 {
		if rebuild {
			c.logf("ERROR need to rebuild refcount structures")
			cnt.checkErrors++
			return errors.New(errnoEIO)
		}
		if cnt.leaks > 0 || cnt.corruptions > 0 {
			*cnt = pre
			c.compareRefcounts(cnt, fix, &rebuild, &highest)
			if c.stopped != nil {
				return c.stopped
			}
		}
	}
	if err := c.checkOflagCopied(cnt, fix); err != nil {
		return err
	}
	c.imageEndOffset = (highest + 1) * c.cs
	return nil
}

func ceilClusters(size, cs int64) int64 {
	if size <= 0 {
		return 0
	}
	return (size-1)/cs + 1
}

// calculateRefcounts is calculate_refcounts: it counts every reference into
// c.imrt. With noRefcounts the refcount table and blocks are left out (for
// building a new refcount structure).
func (c *checker) calculateRefcounts(cnt *checkCounts, fix fixFlags, rebuild *bool, noRefcounts bool) error {
	if err := c.refuseSharedSnapshotL1s(cnt); err != nil {
		return err
	}
	c.inc(cnt, 0, uint64(c.cs)) // header
	if err := c.checkL1(cnt, c.l1Off, c.l1Size, checkFragInfo, fix, true); err != nil {
		return err
	}
	if c.dataFile && len(c.snaps) > 0 {
		c.logf("ERROR %d snapshots in image with data file", len(c.snaps))
		cnt.corruptions++
	}
	for i := range c.snaps {
		sn := &c.snaps[i]
		if sn.L1Offset&c.cmask != 0 {
			c.logf("ERROR snapshot %s (%s) l1_offset=%#x: L1 table is not cluster aligned; snapshot table entry corrupted", sn.ID, sn.Name, sn.L1Offset)
			cnt.corruptions++
			continue
		}
		if sn.L1Size > maxSnapshotL1Entries {
			c.logf("ERROR snapshot %s (%s) l1_size=%#x: L1 table is too large; snapshot table entry corrupted", sn.ID, sn.Name, sn.L1Size)
			cnt.corruptions++
			continue
		}
		if err := c.checkL1(cnt, sn.L1Offset, sn.L1Size, 0, fix, false); err != nil {
			return err
		}
	}
	c.inc(cnt, c.snapOff, uint64(c.snapSize))
	if !noRefcounts {
		c.inc(cnt, c.rtOff, uint64(len(c.rt))*8)
	}
	if err := c.checkBitmaps(cnt); err != nil {
		return err
	}
	if noRefcounts {
		return nil
	}
	return c.checkRefblocks(cnt, fix, rebuild)
}

// inc is qcow2_inc_refcounts_imrt: count a reference to every cluster of
// [off, off+size).
func (c *checker) inc(cnt *checkCounts, off, size uint64) {
	if size == 0 {
		return
	}
	// "Last cluster of qcow2 image may be semi-allocated": a region may
	// reach less than one cluster past the end of the file.
	past := off <= math.MaxInt64 && size <= math.MaxInt64 && off+size >= uint64(c.fileSize)+uint64(c.cs)
	if past && c.growLimit > 0 && off+size <= uint64(c.fileSize+c.growLimit) {
		c.grownEnd = max(c.grownEnd, int64(off+size))
	} else if off > math.MaxInt64 || size > math.MaxInt64 || off+size >= uint64(c.fileSize)+uint64(c.cs) {
		c.logf("ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset 0x%x size 0x%x", off, size)
		cnt.corruptions++
		return
	}
	maxRef := refcountMax(c.order)
	last := (off + size - 1) >> c.cbits
	for k := off >> c.cbits; k <= last; k++ {
		if int64(k) >= c.nbClusters {
			c.nbClusters = int64(k) + 1
		}
		r := c.imrt.get(int64(k))
		if r == maxRef {
			c.logf("ERROR: overflow cluster offset=0x%x", k<<c.cbits)
			c.logf("Use qemu-img amend to increase the refcount entry width or qemu-img convert to create a clean copy if the image cannot be opened for writing")
			cnt.corruptions++
			continue
		}
		c.imrt.set(int64(k), r+1)
	}
}

// checkL1 is check_refcounts_l1. The table is streamed (QEMU reads it
// whole); the active one was loaded at open and is not read again.
func (c *checker) checkL1(cnt *checkCounts, off uint64, n uint32, flags int, fix fixFlags, active bool) error {
	if n == 0 {
		return nil
	}
	c.inc(cnt, off, uint64(n)*8)
	visit := func(_ int64, e uint64) error {
		if e == 0 {
			return nil
		}
		if e&l1ReservedMask != 0 {
			c.logf("ERROR found L1 entry with reserved bits set: %x", e)
			cnt.corruptions++
		}
		l2off := e & l1OffsetMask
		c.inc(cnt, l2off, uint64(c.cs))
		if l2off&c.cmask != 0 {
			c.logf("ERROR l2_offset=%x: Table is not cluster aligned; L1 entry corrupted", l2off)
			cnt.corruptions++
		}
		return c.checkL2(cnt, l2off, flags, fix, active)
	}
	if active && off == c.l1Off && n == c.l1Size {
		for i, e := range c.l1 {
			if err := visit(int64(i), e); err != nil {
				return err
			}
		}
		return nil
	}
	// A snapshot's table: read errors are I/O errors, the rest comes
	// from checkL2.
	var l2err error
	err := c.forEachU64(off, int64(n), func(i int64, e uint64) error {
		if l2err = visit(i, e); l2err != nil {
			return l2err
		}
		return nil
	})
	if err != nil && l2err == nil {
		c.logf("ERROR: I/O error in check_refcounts_l1")
		cnt.checkErrors++
	}
	return err
}

// l2 entry types, as qcow2_get_cluster_type.
const (
	ckUnallocated = iota
	ckZeroPlain
	ckZeroAlloc
	ckNormal
	ckCompressed
)

func (c *checker) clusterType(e uint64) int {
	switch {
	case e&oflagCompressed != 0:
		return ckCompressed
	case e&oflagZero != 0 && !c.extL2:
		if e&l2OffsetMask != 0 {
			return ckZeroAlloc
		}
		return ckZeroPlain
	case e&l2OffsetMask == 0:
		if c.dataFile && e&oflagCopied != 0 {
			return ckNormal
		}
		return ckUnallocated
	}
	return ckNormal
}

func (c *checker) l2Entry(t []byte, i int64) (e, bitmap uint64) {
	return l2EntryAt(t, i, c.extL2)
}

// compressedRange is qcow2_parse_compressed_l2_entry.
func (c *checker) compressedRange(e uint64) (off, size uint64) {
	off = e & c.coffMask
	sectors := (e>>c.csizeShift)&c.csizeMask + 1
	return off, sectors*512 - off&511
}

// checkL2 is check_refcounts_l2.
func (c *checker) checkL2(cnt *checkCounts, l2off uint64, flags int, fix fixFlags, active bool) error {
	c.walked++
	if err := c.run.step("mappings", c.walked, 0); err != nil {
		return err
	}
	if c.l2buf == nil {
		c.l2buf = make([]byte, c.cs)
	}
	t := c.l2buf
	if err := c.readAt(t, l2off); err != nil {
		c.logf("ERROR: I/O error in check_refcounts_l2")
		cnt.checkErrors++
		return err
	}
	var next uint64
	for i := int64(0); i < c.l2Entries; i++ {
		e, bitmap := c.l2Entry(t, i)
		typ := c.clusterType(e)
		if typ != ckCompressed && e&l2ReservedMask != 0 {
			c.logf("ERROR found l2 entry with reserved bits set: %x", e)
			cnt.corruptions++
		}
		switch typ {
		case ckCompressed:
			if e&oflagCopied != 0 {
				c.logf("ERROR: coffset=0x%x: copied flag must never be set for compressed clusters", e&c.coffMask)
				e &^= oflagCopied
				cnt.corruptions++
			}
			if c.dataFile {
				c.logf("ERROR compressed cluster %d with data file, entry=0x%x", i, e)
				cnt.corruptions++
				continue
			}
			if bitmap != 0 {
				c.logf("ERROR compressed cluster %d with non-zero subcluster allocation bitmap, entry=0x%x", i, e)
				cnt.corruptions++
				continue
			}
			coff, csize := c.compressedRange(e)
			c.inc(cnt, coff, csize)
			if flags&checkFragInfo != 0 {
				c.frag.allocated++
				c.frag.compressed++
				c.frag.fragmented++
			}
		case ckZeroAlloc, ckNormal:
			off := e & l2OffsetMask
			if (bitmap>>32)&bitmap != 0 {
				cnt.corruptions++
				c.logf("ERROR offset=%x: Allocated cluster has corrupted subcluster allocation bitmap", off)
			}
			if off&c.cmask != 0 {
				cnt.corruptions++
				var hasData bool
				if c.extL2 {
					hasData = bitmap&l2BitmapAllAlloc != 0
				} else {
					hasData = e&oflagZero == 0
				}
				if !hasData {
					c.logf("%s offset=%x: Preallocated cluster is not properly aligned; L2 entry corrupted.", repairingOr(fix&fixErrors != 0, "ERROR"), off)
					if fix&fixErrors != 0 {
						fixed, err := c.fixL2EntryByZero(cnt, l2off, t, i, active)
						if err != nil {
							return err
						}
						if fixed {
							continue
						}
					}
				} else {
					c.logf("ERROR offset=%x: Data cluster is not properly aligned; L2 entry corrupted.", off)
				}
			}
			if flags&checkFragInfo != 0 {
				c.frag.allocated++
				if next != 0 && off != next {
					c.frag.fragmented++
				}
				next = off + uint64(c.cs)
			}
			if !c.dataFile {
				c.inc(cnt, off, uint64(c.cs))
			}
		case ckUnallocated:
			if bitmap&l2BitmapAllAlloc != 0 {
				cnt.corruptions++
				c.logf("ERROR: Unallocated cluster has non-zero subcluster allocation map")
			}
		}
	}
	return nil
}

// fixL2EntryByZero is fix_l2_entry_by_zero: the entry becomes a plain zero
// cluster. It reports whether the entry was fixed; an error means the
// check must stop (a write would have hit other metadata).
func (c *checker) fixL2EntryByZero(cnt *checkCounts, l2off uint64, t []byte, i int64, active bool) (bool, error) {
	p := t[i*c.l2EntrySize : (i+1)*c.l2EntrySize]
	if c.extL2 {
		bitmap := binary.BigEndian.Uint64(p[8:])
		bitmap |= bitmap << 32
		bitmap &= l2BitmapAllAlloc << 32
		binary.BigEndian.PutUint64(p, 0)
		binary.BigEndian.PutUint64(p[8:], bitmap)
	} else {
		binary.BigEndian.PutUint64(p, oflagZero)
	}
	ign := olActiveL2
	if !active {
		ign = olInactiveL2
	}
	entryOff := l2off + uint64(i*c.l2EntrySize)
	if name := c.metadataOverlap(ign, entryOff, uint64(c.l2EntrySize)); name != "" {
		c.logf("ERROR: Overlap check failed")
		cnt.checkErrors++
		return false, fmt.Errorf("%w: preventing invalid write on metadata (overlaps with %s)", ErrCorrupt, name)
	}
	err := c.writeAt(p, entryOff)
	if err == nil {
		err = c.f.Sync()
	}
	if err != nil {
		c.logf("ERROR: Failed to overwrite L2 table entry: %v", err)
		cnt.checkErrors++
		return false, nil
	}
	cnt.corruptions--
	cnt.corruptionsFixed++
	return true, nil
}

// checkRefblocks is check_refblocks.
func (c *checker) checkRefblocks(cnt *checkCounts, fix fixFlags, rebuild *bool) error {
	for i, e := range c.rt {
		off := e & refTableOffMask
		cl := int64(off >> c.cbits)
		if e&reftReservedMask != 0 {
			c.logf("ERROR refcount table entry %d has reserved bits set", i)
			cnt.corruptions++
			*rebuild = true
			continue
		}
		if off&c.cmask != 0 {
			c.logf("ERROR refcount block %d is not cluster aligned; refcount table entry corrupted", i)
			cnt.corruptions++
			*rebuild = true
			continue
		}
		if off>>c.cbits >= uint64(c.nbClusters) {
			cnt.corruptions++
			c.logf("%s refcount block %d is outside image", repairingOr(fix&fixErrors != 0, "ERROR"), i)
			if fix&fixErrors != 0 {
				if err := c.growFileFor(off); err != nil {
					*rebuild = true
					c.logf("ERROR could not resize image: %v", err)
					continue
				}
				c.nbClusters = max(c.nbClusters, ceilClusters(c.fileSize, c.cs))
				cnt.corruptions--
				cnt.corruptionsFixed++
				c.inc(cnt, off, uint64(c.cs))
			}
			continue
		}
		if off != 0 {
			c.inc(cnt, off, uint64(c.cs))
			if r := c.imrt.get(cl); r != 1 {
				c.logf("ERROR refcount block %d refcount=%d", i, r)
				cnt.corruptions++
				*rebuild = true
			}
		}
	}
	return nil
}

// maxRefblockGrowth bounds, in clusters, how far past the end of the file
// a refcount block may lie for growFileFor to extend the file to it.
const maxRefblockGrowth = 64

// growFileFor extends the file so that the refcount block at off lies in
// it (QEMU truncates the file up, however far). Unlike QEMU, growth is
// refused beyond maxRefblockGrowth clusters past the end of the file (a
// refcount block lost in a crash lies just past it): a wild pointer then
// leads to a rebuild instead of a giant sparse file.
func (c *checker) growFileFor(off uint64) error {
	if off > math.MaxInt64-uint64(c.cs) {
		return errors.New("Invalid argument")
	}
	end := int64(off) + c.cs
	if end > c.fileSize+maxRefblockGrowth*c.cs {
		return errors.New("File too large")
	}
	if err := c.f.Truncate(end); err != nil {
		return err
	}
	return c.refreshSize()
}

// storedRefcount is qcow2_get_refcount on the current refcount structure.
func (c *checker) storedRefcount(k int64) (uint64, error) {
	ri := uint64(k) >> c.rbBits
	if ri >= uint64(len(c.rt)) {
		return 0, nil
	}
	block, err := c.refBlock(ri)
	if err != nil || block == nil {
		return 0, err
	}
	return getRefcount(block, uint64(k)&(uint64(1)<<c.rbBits-1), c.order), nil
}

// refBlock returns refcount block ri of the current refcount table (nil
// if unallocated). The buffer is cached and shared.
func (c *checker) refBlock(ri uint64) ([]byte, error) {
	off := c.rt[ri] & refTableOffMask
	if off == 0 {
		return nil, nil
	}
	if off&c.cmask != 0 {
		if !c.signaled {
			c.signaled = true
			c.logf("qcow2: Image is corrupt: Refblock offset %#x unaligned (reftable index: %#x); further non-fatal corruption events will be suppressed", off, ri)
		}
		return nil, errors.New(errnoEIO)
	}
	for i := range c.rbSlot {
		if sl := &c.rbSlot[i]; sl.buf != nil && sl.off == off {
			return sl.buf, nil
		}
	}
	sl := &c.rbSlot[c.rbNext]
	c.rbNext = (c.rbNext + 1) % len(c.rbSlot)
	if sl.buf == nil {
		sl.buf = make([]byte, c.cs)
	}
	sl.off = 0
	if err := c.readAt(sl.buf, off); err != nil {
		return nil, errors.New(errnoEIO)
	}
	sl.off = off
	return sl.buf, nil
}

// rbCacheSlot is one cached refcount block. The buffers are reused, so a
// block returned by refBlock stays valid only until refBlock loads
// len(rbSlot) other blocks.
type rbCacheSlot struct {
	off uint64
	buf []byte
}

// dropRefBlockCache forgets every cached refcount block.
func (c *checker) dropRefBlockCache() {
	for i := range c.rbSlot {
		c.rbSlot[i].off = 0
	}
}

// setStoredRefcount is update_refcount for an existing refcount block: set
// cluster k's refcount to v; a cluster whose refcount drops to 0 is
// discarded, as QEMU does with QCOW2_DISCARD_ALWAYS.
func (c *checker) setStoredRefcount(k int64, v uint64) error {
	ri := uint64(k) >> c.rbBits
	if ri >= uint64(len(c.rt)) {
		return errors.New("no refcount block")
	}
	block, err := c.refBlock(ri)
	if err != nil {
		return err
	}
	if block == nil {
		return errors.New("no refcount block")
	}
	idx := uint64(k) & (uint64(1)<<c.rbBits - 1)
	setRefcount(block, idx, c.order, v)
	width := uint64(1) << c.order
	lo := idx * width / 8
	hi := max(lo+1, (idx+1)*width/8)
	off := c.rt[ri]&refTableOffMask + lo
	if err := c.writeAt(block[lo:hi], off); err != nil {
		c.dropRefBlockCache()
		return err
	}
	if v == 0 {
		// Best effort, like QEMU's discard.
		_ = c.f.PunchHole(k*c.cs, c.cs)
	}
	return nil
}

// compareRefcounts is compare_refcounts.
func (c *checker) compareRefcounts(cnt *checkCounts, fix fixFlags, rebuild *bool, highest *int64) {
	*highest = 0
	perBlock := int64(1) << c.rbBits
	wrote := false
	for start := int64(0); start < c.nbClusters; start += perBlock {
		if c.stopped = c.run.step("refcounts", start/perBlock+1, ceilDiv(c.nbClusters, perBlock)); c.stopped != nil {
			return
		}
		ri := uint64(start) >> c.rbBits
		end := min(start+perBlock, c.nbClusters)
		var block []byte
		var blockErr error
		if ri < uint64(len(c.rt)) {
			block, blockErr = c.refBlock(ri)
		}
		if block == nil && blockErr == nil && !c.imrt.anyInRange(start, end) {
			continue // nothing stored, nothing referenced
		}
		for k := start; k < end; k++ {
			if blockErr != nil {
				c.logf("Can't get refcount for cluster %d: %v", k, blockErr)
				cnt.checkErrors++
				continue
			}
			var r1 uint64
			if block != nil {
				r1 = getRefcount(block, uint64(k-start), c.order)
			}
			r2 := c.imrt.get(k)
			if r1 > 0 || r2 > 0 {
				*highest = k
			}
			if r1 == r2 {
				continue
			}
			var fixed *int
			switch {
			case r1 == 0:
				*rebuild = true
			case r1 > r2 && fix&fixLeaks != 0:
				fixed = &cnt.leaksFixed
			case r1 < r2 && fix&fixErrors != 0:
				fixed = &cnt.corruptionsFixed
			}
			what := "Leaked"
			if fixed != nil {
				what = "Repairing"
			} else if r1 < r2 {
				what = "ERROR"
			}
			c.logf("%s cluster %d refcount=%d reference=%d", what, k, r1, r2)
			if fixed != nil {
				if err := c.setStoredRefcount(k, r2); err == nil {
					*fixed++
					wrote = true
					continue
				}
			}
			if r1 < r2 {
				cnt.corruptions++
			} else {
				cnt.leaks++
			}
		}
	}
	if wrote {
		_ = c.f.Sync()
	}
}

// checkOflagCopied is check_oflag_copied: in the active tables, COPIED
// must be set exactly on entries whose cluster has refcount 1.
func (c *checker) checkOflagCopied(cnt *checkCounts, fix fixFlags) error {
	var repair bool
	switch {
	case fix&fixErrors != 0:
		repair = true
	case fix&fixLeaks != 0:
		repair = cnt.checkErrors == 0 && cnt.corruptions == 0 && cnt.leaks == 0
	}
	if c.l2buf == nil {
		c.l2buf = make([]byte, c.cs)
	}
	t := c.l2buf
	for i, e := range c.l1 {
		l2off := e & l1OffsetMask
		if l2off == 0 {
			continue
		}
		r, err := c.storedRefcount(int64(l2off >> c.cbits))
		if err != nil {
			continue
		}
		if (r == 1) != (e&oflagCopied != 0) {
			cnt.corruptions++
			c.logf("%s OFLAG_COPIED L2 cluster: l1_index=%d l1_entry=%x refcount=%d", repairingOr(repair, "ERROR"), i, e, r)
			if repair {
				ne := e &^ oflagCopied
				if r == 1 {
					ne = e | oflagCopied
				}
				if err := c.writeL1Entry(i, ne); err != nil {
					cnt.checkErrors++
					return err
				}
				cnt.corruptions--
				cnt.corruptionsFixed++
			}
		}
		if err := c.readAt(t, l2off); err != nil {
			c.logf("ERROR: Could not read L2 table: %v", err)
			cnt.checkErrors++
			return err
		}
		dirty := 0
		for j := int64(0); j < c.l2Entries; j++ {
			e2, _ := c.l2Entry(t, j)
			typ := c.clusterType(e2)
			if typ != ckNormal && typ != ckZeroAlloc {
				continue
			}
			r2 := uint64(1)
			if !c.dataFile {
				if r2, err = c.storedRefcount(int64((e2 & l2OffsetMask) >> c.cbits)); err != nil {
					continue
				}
			}
			if (r2 == 1) != (e2&oflagCopied != 0) {
				cnt.corruptions++
				c.logf("%s OFLAG_COPIED data cluster: l2_entry=%x refcount=%d", repairingOr(repair, "ERROR"), e2, r2)
				if repair {
					ne := e2 &^ oflagCopied
					if r2 == 1 {
						ne = e2 | oflagCopied
					}
					binary.BigEndian.PutUint64(t[j*c.l2EntrySize:], ne)
					dirty++
				}
			}
		}
		if dirty > 0 {
			if name := c.metadataOverlap(olActiveL2, l2off, uint64(c.cs)); name != "" {
				c.logf("ERROR: Could not write L2 table; metadata overlap check failed: overlaps with %s", name)
				cnt.checkErrors++
				return fmt.Errorf("%w: preventing invalid write on metadata (overlaps with %s)", ErrCorrupt, name)
			}
			err := c.writeAt(t, l2off)
			if err == nil {
				err = c.f.Sync()
			}
			if err != nil {
				c.logf("ERROR: Could not write L2 table: %v", err)
				cnt.checkErrors++
				return err
			}
			cnt.corruptions -= dirty
			cnt.corruptionsFixed += dirty
		}
	}
	return nil
}

// writeL1Entry is qcow2_write_l1_entry for the active L1 table.
func (c *checker) writeL1Entry(i int, e uint64) error {
	off := c.l1Off + uint64(i)*8
	if name := c.metadataOverlap(olActiveL1, off, 8); name != "" {
		return fmt.Errorf("%w: preventing invalid write on metadata (overlaps with %s)", ErrCorrupt, name)
	}
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], e)
	if err := c.writeAt(b[:], off); err != nil {
		return err
	}
	if err := c.f.Sync(); err != nil {
		return err
	}
	c.l1[i] = e
	return nil
}

// --- bitmaps --------------------------------------------------------------

type bitmapDirEntry struct {
	tableOff  uint64
	tableSize uint32
}

// checkBitmaps is qcow2_check_bitmaps_refcounts: the bitmap directory,
// every bitmap table and every bitmap data cluster are referenced.
func (c *checker) checkBitmaps(cnt *checkCounts) error {
	if c.bm.n == 0 {
		return nil
	}
	c.inc(cnt, c.bm.dirOff, c.bm.dirSize)
	list, err := c.loadBitmapDir()
	if err != nil {
		cnt.corruptions++
		return err
	}
	for _, bm := range list {
		c.inc(cnt, bm.tableOff, uint64(bm.tableSize)*8)
		// bitmap_table_load validates every entry before any is
		// counted: two passes over the streamed table.
		err := c.forEachU64(bm.tableOff, int64(bm.tableSize), func(_ int64, e uint64) error {
			return c.checkBitmapTableEntry(e)
		})
		if err != nil {
			cnt.corruptions++
			return err
		}
		err = c.forEachU64(bm.tableOff, int64(bm.tableSize), func(_ int64, e uint64) error {
			if off := e & bmeOffsetMask; off != 0 {
				c.inc(cnt, off, uint64(c.cs))
			}
			return nil
		})
		if err != nil {
			cnt.corruptions++
			return err
		}
	}
	return nil
}

func (c *checker) checkBitmapTableEntry(e uint64) error {
	if e&bmeReservedMask != 0 {
		return fmt.Errorf("%w: bitmap table entry %#x has reserved bits set", ErrInvalid, e)
	}
	if off := e & bmeOffsetMask; off != 0 && (e&bmeFlagAllOnes != 0 || off&c.cmask != 0) {
		return fmt.Errorf("%w: bitmap table entry %#x invalid", ErrInvalid, e)
	}
	return nil
}

// loadBitmapDir is bitmap_list_load.
func (c *checker) loadBitmapDir() ([]bitmapDirEntry, error) {
	size := c.bm.dirSize
	if size == 0 {
		return nil, fmt.Errorf("%w: requested bitmap directory size is zero", ErrInvalid)
	}
	if size > maxBitmapDirSize {
		return nil, fmt.Errorf("%w: requested bitmap directory size is too big", ErrInvalid)
	}
	r := &snapshotTableReader{f: c.f}
	be := binary.BigEndian
	var list []bitmapDirEntry
	broken := fmt.Errorf("%w: broken bitmap directory", ErrInvalid)
	var e [bitmapDirEntLen]byte
	pos := uint64(0)
	for pos < size {
		if size-pos < bitmapDirEntLen {
			return nil, broken
		}
		if uint32(len(list)) >= c.bm.n {
			return nil, fmt.Errorf("%w: more bitmaps found than specified in header extension", ErrInvalid)
		}
		if err := r.read(e[:], c.bm.dirOff+pos); err != nil {
			return nil, fmt.Errorf("failed to read bitmap directory: %w", err)
		}
		tableOff := be.Uint64(e[0:])
		tableSize := be.Uint32(e[8:])
		flags := be.Uint32(e[12:])
		typ := e[16]
		gran := e[17]
		nameSize := uint64(be.Uint16(e[18:]))
		extraSize := uint64(be.Uint32(e[20:]))
		entLen := (bitmapDirEntLen + nameSize + extraSize + 7) &^ 7
		if entLen > size-pos {
			return nil, broken
		}
		if extraSize != 0 {
			return nil, fmt.Errorf("%w: bitmap extra data is not supported", ErrInvalid)
		}
		phys := uint64(tableSize) * uint64(c.cs)
		bad := tableSize == 0 || tableOff == 0 || tableOff&c.cmask != 0 ||
			tableSize > maxBitmapTable || gran > 31 || gran < 9 ||
			flags&^3 != 0 || nameSize > 1023 || typ != 1 || phys > maxBitmapPhys ||
			(flags&1 == 0 && c.virtualSize > (phys*8)<<gran)
		if bad {
			name := make([]byte, nameSize)
			_ = r.read(name, c.bm.dirOff+pos+bitmapDirEntLen)
			return nil, fmt.Errorf("%w: bitmap %q doesn't satisfy the constraints", ErrInvalid, name)
		}
		list = append(list, bitmapDirEntry{tableOff: tableOff, tableSize: tableSize})
		pos += entLen
	}
	if uint32(len(list)) != c.bm.n {
		return nil, fmt.Errorf("%w: less bitmaps found than specified in header extension", ErrInvalid)
	}
	return list, nil
}

// --- metadata overlap (qcow2_check_metadata_overlap, "cached" mode) -------

const (
	olMainHeader = 1 << iota
	olActiveL1
	olActiveL2
	olRefcountTable
	olRefcountBlock
	olSnapshotTable
	olInactiveL1
	olInactiveL2
	olBitmapDirectory
)

// metadataOverlap returns the name of the metadata structure that a write
// of size bytes at off would hit ("" if none), skipping the kinds in ign.
func (c *checker) metadataOverlap(ign int, off, size uint64) string {
	chk := (olMainHeader | olActiveL1 | olActiveL2 | olRefcountTable | olRefcountBlock |
		olSnapshotTable | olInactiveL1 | olBitmapDirectory) &^ ign
	if size == 0 {
		return ""
	}
	if chk&olMainHeader != 0 && off < uint64(c.cs) {
		return "qcow2_header"
	}
	size = (off&c.cmask + size + c.cmask) &^ c.cmask
	off &^= c.cmask
	hit := func(a, n uint64) bool { return n > 0 && a < off+size && off < a+n }
	if chk&olActiveL1 != 0 && hit(c.l1Off, uint64(c.l1Size)*8) {
		return "active L1 table"
	}
	if chk&olRefcountTable != 0 && hit(c.rtOff, uint64(len(c.rt))*8) {
		return "refcount table"
	}
	if chk&olSnapshotTable != 0 && hit(c.snapOff, uint64(c.snapSize)) {
		return "snapshot table"
	}
	if chk&olInactiveL1 != 0 {
		for i := range c.snaps {
			if hit(c.snaps[i].L1Offset, uint64(c.snaps[i].L1Size)*8) {
				return "inactive L1 table"
			}
		}
	}
	if chk&olActiveL2 != 0 {
		for _, e := range c.l1 {
			if l2 := e & l1OffsetMask; l2 != 0 && hit(l2, uint64(c.cs)) {
				return "active L2 table"
			}
		}
	}
	if chk&olRefcountBlock != 0 {
		for _, e := range c.rt {
			if rb := e & refTableOffMask; rb != 0 && hit(rb, uint64(c.cs)) {
				return "refcount block"
			}
		}
	}
	if chk&olBitmapDirectory != 0 && c.h.AutoclearFeatures&autoclearBitmaps != 0 && hit(c.bm.dirOff, c.bm.dirSize) {
		return "bitmap directory"
	}
	return ""
}

// --- in-memory refcount array ---------------------------------------------

// refArray is QEMU's in-memory refcount table: one entry of the image's
// refcount width per cluster, packed like a refcount block. It is stored
// in chunks allocated on first use, so a sparse reference pattern in a
// large file costs little memory. A chunk is a whole number of refcount
// blocks, so a block's entries can be written out directly.
type refArray struct {
	order      uint32
	chunkBytes int64
	chunkShift uint32 // log2 of entries per chunk
	chunks     [][]byte
}

func newRefArray(order uint32, clusterSize int64) *refArray {
	cb := max(clusterSize, 64<<10)
	shift := uint32(0)
	for int64(1)<<shift < cb {
		shift++
	}
	return &refArray{order: order, chunkBytes: cb, chunkShift: shift + 3 - order}
}

func (a *refArray) get(k int64) uint64 {
	ci := k >> a.chunkShift
	if ci >= int64(len(a.chunks)) || a.chunks[ci] == nil {
		return 0
	}
	return getRefcount(a.chunks[ci], uint64(k&(int64(1)<<a.chunkShift-1)), a.order)
}

func (a *refArray) set(k int64, v uint64) {
	ci := k >> a.chunkShift
	if ci >= int64(len(a.chunks)) {
		if v == 0 {
			return
		}
		a.chunks = append(a.chunks, make([][]byte, ci+1-int64(len(a.chunks)))...)
	}
	if a.chunks[ci] == nil {
		if v == 0 {
			return
		}
		a.chunks[ci] = make([]byte, a.chunkBytes)
	}
	setRefcount(a.chunks[ci], uint64(k&(int64(1)<<a.chunkShift-1)), a.order, v)
}

// anyInRange reports whether a chunk overlapping clusters [start, end)
// exists (a conservative "might be non-zero").
func (a *refArray) anyInRange(start, end int64) bool {
	for ci := start >> a.chunkShift; ci <= (end-1)>>a.chunkShift; ci++ {
		if ci < int64(len(a.chunks)) && a.chunks[ci] != nil {
			return true
		}
	}
	return false
}

// block returns the packed entries of refcount block ri (blockBytes long,
// the cluster size), or nil if they are all zero.
func (a *refArray) block(ri, blockBytes int64) []byte {
	byteOff := ri * blockBytes
	ci := byteOff / a.chunkBytes
	if ci >= int64(len(a.chunks)) || a.chunks[ci] == nil {
		return nil
	}
	in := byteOff % a.chunkBytes
	b := a.chunks[ci][in : in+blockBytes]
	for _, x := range b {
		if x != 0 {
			return b
		}
	}
	return nil
}
