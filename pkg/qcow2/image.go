package qcow2

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/bits"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Image is an open qcow2 image. All methods are safe for concurrent use.
//
// Locking: mu guards all metadata. Reads and in-place writes to clusters
// this image owns exclusively (OFLAG_COPIED) hold it shared, so they run in
// parallel; anything that changes metadata (allocation, zeroing, discard,
// resize, flush's deferred frees) holds it exclusively; all but the
// allocating write path and Flush take it with lockQuiesced
// (group_commit.go).
type Image struct {
	name     string
	f        File
	fd       int // img.f's descriptor for guest data reads, -1: f.ReadAt (pread.go)
	wfd      int // its descriptor for in-place guest writes, -1: f.WriteAt
	opts     Options
	readOnly bool // opened read-only (immutable after open)

	mu  sync.RWMutex
	hdr *Header

	cb           uint32 // cluster_bits
	cs           int64  // cluster size
	l2Entries    int64  // entries per L2 table
	sliceEntries int64  // entries per cached L2 slice
	ext          bool   // extended L2 entries (subcluster.go)
	l2es         int64  // bytes per L2 entry: 8, or 16 when ext
	scs          int64  // subcluster size: cs/32 when ext, else cs
	l2Bits       uint8  // log2(l2Entries): the hot path shifts, it does not divide
	sliceBits    uint8  // log2(sliceEntries)
	size         int64  // virtual size

	l1  []uint64
	l2c *tableCache

	refOrder  uint32
	refPerBlk int64    // refcount entries per refcount block
	rt        []uint64 // refcount table
	rbc       *tableCache

	alloc allocator
	meta  metadataSet
	cpack compressPack // where the next compressed stream goes (compress_write.go)
	cow   cowInflight  // copy-on-write allocations waiting for their sync (group_commit.go)
	syncs syncGroup    // fdatasync shared by those allocations
	jr    journal      // deferred copy-on-write mappings (journal.go)
	// mirror: host offsets of data clusters, learnt by reads (l2_mirror.go).
	mirror []atomic.Uint64
	// cowBufs holds cluster buffers for copy-on-write (clusterBuf).
	cowBufs sync.Pool

	backing Disk
	bm      bitmapState // persistent bitmaps (bitmap.go)

	// hdrIncompat mirrors incompatible_features as stored on disk; it is
	// atomic because corruption can be signalled under the read lock.
	hdrIncompat atomic.Uint64
	corruptMu   sync.Mutex
	corrupt     atomic.Bool // corruption found: no more writes
	// closed is set by Close under the exclusive lock before it closes f;
	// readers check it under the shared lock before they use f or fd.
	closed   bool
	keepFile bool // Close leaves f open (CreateFile's caller owns it)
	// keepDirty: an operation failed while the dirty bit was set, so the
	// refcounts may be wrong; Close leaves the bit set (Open rebuilds).
	keepDirty bool
}

// Open opens the qcow2 image at path. It locks the file as QEMU does
// (lock.go): a writable open fails with ErrLocked while any other user
// reads or writes the image without force-share, a read-only one while
// another writes it (unless opts.ForceShare); backing files are locked as
// readers.
func Open(path string, opts Options) (*Image, error) {
	return OpenContext(context.Background(), path, opts)
}

// OpenContext is Open that gives up when ctx is done: the one long step of
// an open is the refcount rebuild of a dirty image (a crash with lazy
// refcounts, a discarded journal), which walks all its metadata; stopped,
// it leaves the image dirty, and the next open rebuilds again.
// opts.Progress hears how the rebuild goes.
func OpenContext(ctx context.Context, path string, opts Options) (*Image, error) {
	opts.ctx = ctx
	if err := checkLockOptions(opts); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	flag := os.O_RDWR
	if opts.ReadOnly {
		flag = os.O_RDONLY
	}
	fh, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, err
	}
	of := &osFile{f: fh, canPunch: true}
	// Before anything else: the journal, the dirty bit and the refcount
	// rebuild below all write the image.
	if err := of.setLock(lockModeFor(opts)); err != nil {
		of.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	f := opts.wrapFile(path, of)
	jf, err := openJournalFile(path, f, opts)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	opts.journalFile, opts.journalPath = jf, ""
	if jf != nil {
		opts.journalPath = JournalPath(path)
	}
	return OpenFile(f, path, opts)
}

// OpenFile opens an image stored in f. name is the image's path: backing
// file names stored in the image resolve relative to its directory. OpenFile
// takes ownership of f and closes it on error. It takes no image lock on f,
// which the caller opened (Open does); the backing files it opens are
// locked as Open locks them.
func OpenFile(f File, name string, opts Options) (*Image, error) {
	img, err := openFile(f, name, opts, 0)
	if err != nil {
		f.Close()
		if opts.journalFile != nil {
			opts.journalFile.Close()
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return img, nil
}

// openFile opens the image in f as layer depth of a chain (0: the top,
// which starts the chain's openChain). Everything that can refuse the
// image from its header, the backing chain included, comes before the
// first write a writable open makes (journal replay, refcount rebuild,
// bitmap upkeep): a refused open leaves the file as it was.
func openFile(f File, name string, opts Options, depth int) (*Image, error) {
	if depth == 0 {
		ch, err := newOpenChain(opts)
		if err != nil {
			return nil, err
		}
		ch.enterTop(name, f)
		opts.chain = ch
	}
	if !opts.ReadOnly {
		// From the first write of the open on (journal replay, refcount
		// repair), a failed sync is sticky (sync_guard.go).
		f = guardSyncs(f)
		// A failed writeback in this boot (a handle before this one
		// whose sync failed) left its pages in the page cache, clean,
		// with bytes the disk does not have; nothing would write them
		// again. Drop the clean pages, so that this handle reads what
		// is on the disk (leaks at worst), not mappings a Flush of
		// ours would then build on.
		if of, ok := hostFile(f); ok {
			_ = unix.Fadvise(int(of.f.Fd()), 0, 0, unix.FADV_DONTNEED)
		}
	}
	h, err := readHeader(f)
	if err != nil {
		return nil, err
	}
	if err := checkNamedFiles(h, opts.Backing); err != nil {
		return nil, err
	}
	if err := checkExtendedL2(h); err != nil {
		return nil, err
	}
	readOnly := opts.ReadOnly
	if h.IncompatibleFeatures&incompatCorrupt != 0 && !readOnly {
		return nil, fmt.Errorf("%w: the corrupt bit is set; open it read-only, or repair it with `img check -r all`", ErrCorrupt)
	}
	jf := opts.journalFile
	if h.IncompatibleFeatures&incompatJournal != 0 && jf == nil {
		return nil, fmt.Errorf("%w; open the image by its path, which finds the journal (%s)", ErrJournalPending, JournalPath(name))
	}
	if err := checkTableSizes(h); err != nil {
		return nil, err
	}
	cost := estimateLayerCost(h, opts)
	if err := opts.chain.budget.charge(name, cost); err != nil {
		return nil, err
	}
	var backing Disk
	if h.BackingFile != "" && !opts.NoBacking {
		if depth+1 >= maxChainDepth {
			return nil, fmt.Errorf("%w: backing chain deeper than %d", ErrInvalid, maxChainDepth)
		}
		if backing, err = openBacking(name, h.BackingFile, h.BackingFormat, opts, depth+1); err != nil {
			return nil, fmt.Errorf("opening backing file %q: %w", h.BackingFile, err)
		}
	}
	img, err := openLayer(f, name, h, cost, opts, backing)
	if err != nil {
		if backing != nil {
			backing.Close()
		}
		return nil, err
	}
	img.opts.chain = nil
	return img, nil
}

// checkNamedFiles applies the policy to the files the header names
// besides the backing file's name itself (backing.go resolves that).
func checkNamedFiles(h *Header, pol BackingPolicy) error {
	if h.IncompatibleFeatures&incompatDataFile != 0 {
		if !pol.AllowDataFile {
			return fmt.Errorf("%w: image uses an external data file (%q)", ErrPolicy, h.DataFile)
		}
		return fmt.Errorf("%w: external data files", ErrUnsupported)
	}
	if pol.Standalone && h.BackingFile != "" {
		return fmt.Errorf("%w: image names a backing file (%q) but must stand alone", ErrPolicy, h.BackingFile)
	}
	return nil
}

// openLayer is the rest of openFile once the header passed and the
// backing chain (nil if none) is open: the writable open's repairs, the
// tables, the journal and the bitmaps.
func openLayer(f File, name string, h *Header, cost layerCost, opts Options, backing Disk) (*Image, error) {
	readOnly := opts.ReadOnly
	jf := opts.journalFile
	var err error
	rebuild := false // a discarded journal leaked the clusters it mapped
	if h.IncompatibleFeatures&incompatJournal != 0 && !readOnly {
		if rebuild, err = settleJournalOnOpen(f, h, jf, opts); err != nil {
			return nil, err
		}
		if h, err = readHeader(f); err != nil {
			return nil, err
		}
	}
	if (h.IncompatibleFeatures&incompatDirty != 0 || rebuild) && !readOnly {
		if opts.NoAutoRepair {
			readOnly = true
		} else {
			if err := rebuildRefcounts(opts.longRun(), f, h); err != nil {
				return nil, fmt.Errorf("repairing refcounts of a dirty image: %w", err)
			}
			if h, err = readHeader(f); err != nil {
				return nil, err
			}
		}
	}
	if !readOnly {
		if h, err = dropUnmaintainableBitmaps(f, h); err != nil {
			return nil, err
		}
	}
	if err := checkTableSizes(h); err != nil {
		return nil, err
	}
	// A rebuild may have grown the refcount table: charge the change.
	if err := opts.chain.budget.charge(name, estimateLayerCost(h, opts).minus(cost)); err != nil {
		return nil, err
	}
	img := &Image{name: name, f: f, fd: readFD(f), wfd: writeFD(f, readOnly), opts: opts, readOnly: readOnly, hdr: h}
	img.opts.journalFile, img.opts.journalPath = nil, ""
	// The open's context ends with the open.
	img.opts.ctx = nil
	if err := img.loadTables(); err != nil {
		return nil, err
	}
	if jf != nil {
		if err := img.attachJournal(jf, opts); err != nil {
			return nil, err
		}
	}
	img.backing = backing
	// Last: marking bitmaps in use is the open's only write that an
	// error further on would leave behind.
	if err := img.openBitmaps(); err != nil {
		return nil, err
	}
	return img, nil
}

func readHeader(f File) (*Header, error) {
	fsize, err := f.Size()
	if err != nil {
		return nil, err
	}
	// Read cluster 0 only: its size comes from cluster_bits at offset 20.
	var peek [24]byte
	if err := readFull(f, peek[:], 0); err != nil {
		return nil, err
	}
	n := int64(1) << maxClusterBits
	if cb := binary.BigEndian.Uint32(peek[20:]); cb >= minClusterBits && cb <= maxClusterBits {
		n = int64(1) << cb
	}
	buf := make([]byte, min(fsize, n))
	if err := readFull(f, buf, 0); err != nil {
		return nil, err
	}
	return parseHeader(buf)
}

// loadTables validates the geometry in the header and loads the L1 and
// refcount tables.
func (img *Image) loadTables() error {
	h := img.hdr
	img.cb = h.ClusterBits
	img.cs = int64(1) << h.ClusterBits
	img.ext = h.IncompatibleFeatures&incompatExtendedL2 != 0
	img.l2es, img.scs = l2EntrySize(img.ext), img.cs
	if img.ext {
		img.scs = img.cs / subclusters
	}
	img.l2Entries = img.cs / img.l2es
	img.sliceEntries = min(img.l2Entries, 4096/img.l2es)
	img.size = int64(h.Size)
	img.refOrder = h.RefcountOrder
	img.refPerBlk = int64(refcountEntriesPerBlock(uint64(img.cs), h.RefcountOrder))
	img.l2Bits = uint8(bits.TrailingZeros64(uint64(img.l2Entries)))
	img.sliceBits = uint8(bits.TrailingZeros64(uint64(img.sliceEntries)))
	fsize, err := img.f.Size()
	if err != nil {
		return err
	}

	if err := checkTableSizes(h); err != nil {
		return err
	}
	if h.L1Size > 0 {
		if err := img.checkTableRegion("L1 table", h.L1TableOffset, int64(h.L1Size)*8, fsize); err != nil {
			return err
		}
	}
	img.l1 = make([]uint64, h.L1Size)
	if err := img.readU64s(img.l1, int64(h.L1TableOffset)); err != nil {
		return err
	}

	rtBytes := int64(h.RefcountTableClusters) * img.cs
	if err := img.checkTableRegion("refcount table", h.RefcountTableOffset, rtBytes, fsize); err != nil {
		return err
	}
	img.rt = make([]uint64, rtBytes/8)
	if err := img.readU64s(img.rt, int64(h.RefcountTableOffset)); err != nil {
		return err
	}

	l2Bytes, rbBytes := cacheBytes(h, img.opts)
	img.l2c = newTableCache(int(img.sliceEntries*img.l2es), l2Bytes, l2CacheMinEntries)
	img.rbc = newTableCache(int(img.cs), rbBytes, refcountCacheMinEntries)
	img.alloc.init(ceilDiv(fsize, img.cs))
	img.initMirror()
	img.hdrIncompat.Store(h.IncompatibleFeatures)
	return img.meta.build(img)
}

// checkTableSizes bounds the tables the header sizes, before anything is
// allocated for them (QEMU's limits, limits.go).
func checkTableSizes(h *Header) error {
	cs := h.clusterSize()
	l2Entries := cs / l2EntrySize(h.IncompatibleFeatures&incompatExtendedL2 != 0)
	need := ceilDiv(int64(h.Size), cs*l2Entries)
	if int64(h.L1Size) < need {
		return fmt.Errorf("%w: L1 table has %d entries, the virtual size needs %d", ErrInvalid, h.L1Size, need)
	}
	if int64(h.L1Size)*8 > maxL1Bytes {
		return fmt.Errorf("%w: L1 table of %d entries exceeds %d bytes", ErrInvalid, h.L1Size, maxL1Bytes)
	}
	if rtBytes := int64(h.RefcountTableClusters) * cs; rtBytes > maxRefcountTableBytes || h.RefcountTableClusters == 0 {
		return fmt.Errorf("%w: refcount table of %d clusters", ErrInvalid, h.RefcountTableClusters)
	}
	if h.NbSnapshots > maxSnapshots {
		return fmt.Errorf("%w: %d snapshots (at most %d)", ErrInvalid, h.NbSnapshots, maxSnapshots)
	}
	if h.NbSnapshots > 0 && (h.SnapshotsOffset%uint64(cs) != 0 || h.SnapshotsOffset == 0) {
		return fmt.Errorf("%w: snapshot table offset %#x", ErrInvalid, h.SnapshotsOffset)
	}
	return nil
}

// cacheBytes returns the capacities of the L2 and refcount block caches
// of an image with header h opened under opts.
func cacheBytes(h *Header, opts Options) (l2, rb int64) {
	cs := h.clusterSize()
	l2Entries := cs / l2EntrySize(h.IncompatibleFeatures&incompatExtendedL2 != 0)
	l2 = opts.L2CacheBytes
	if l2 <= 0 {
		// Enough to map the whole disk, up to 64 GiB at 64 KiB clusters.
		need := ceilDiv(int64(h.Size), cs*l2Entries)
		l2 = min(8<<20, max(need*cs, 1<<16))
	}
	rb = opts.RefcountCacheBytes
	if rb <= 0 {
		rb = max(l2/4, 4*cs)
	}
	return l2, rb
}

// checkTableRegion validates a table's offset and length against the file.
func (img *Image) checkTableRegion(what string, off uint64, length, fsize int64) error {
	if off%uint64(img.cs) != 0 || off == 0 {
		return fmt.Errorf("%w: %s offset %#x is not cluster aligned", ErrInvalid, what, off)
	}
	if off > uint64(maxHostOffset) || int64(off) > fsize-length {
		return fmt.Errorf("%w: %s at %#x (+%d bytes) is beyond the end of the file (%d bytes)", ErrInvalid, what, off, length, fsize)
	}
	return nil
}

// readU64s reads big-endian words into dst through a bounded buffer, so
// that a 32 MiB table costs its slice and not twice that.
func (img *Image) readU64s(dst []uint64, off int64) error {
	const chunk = 8192 // words
	buf := make([]byte, min(len(dst), chunk)*8)
	for len(dst) > 0 {
		n := min(len(dst), chunk)
		if err := readFull(img.f, buf[:n*8], off); err != nil {
			return err
		}
		for i := range n {
			dst[i] = binary.BigEndian.Uint64(buf[i*8:])
		}
		dst, off = dst[n:], off+int64(n)*8
	}
	return nil
}

func (img *Image) writeU64(off int64, v uint64) error {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	_, err := img.f.WriteAt(b[:], off)
	return err
}

func (img *Image) writeHeaderU64(off int64, v uint64) error { return img.writeU64(off, v) }

// Size returns the virtual size in bytes.
func (img *Image) Size() int64 {
	img.mu.RLock()
	defer img.mu.RUnlock()
	return img.size
}

// ClusterSize returns the cluster size in bytes.
func (img *Image) ClusterSize() int64 { return img.cs }

// Header returns a copy of the image header.
func (img *Image) Header() Header {
	img.mu.RLock()
	defer img.mu.RUnlock()
	return *img.hdr
}

// Backing returns the backing image or file, nil if there is none.
func (img *Image) Backing() Disk { return img.backing }

// ReadOnly reports whether writes are refused: opened read-only, or
// turned read-only by detected corruption.
func (img *Image) ReadOnly() bool { return img.readOnly || img.corrupt.Load() }

// Info returns what `img info` prints about this image.
func (img *Image) Info() Info {
	img.mu.RLock()
	defer img.mu.RUnlock()
	h := img.hdr
	in := Info{
		Filename:        img.name,
		Format:          "qcow2",
		VirtualSize:     img.size,
		ActualSize:      allocatedBytes(img.name),
		ClusterSize:     img.cs,
		BackingFilename: h.BackingFile,
		BackingFormat:   h.BackingFormat,
		Compat:          "1.1",
		LazyRefcounts:   h.CompatibleFeatures&compatLazyRefcounts != 0,
		RefcountBits:    1 << h.RefcountOrder,
		Corrupt:         img.hdrIncompat.Load()&incompatCorrupt != 0,
		Dirty:           img.hdrIncompat.Load()&incompatDirty != 0,
		ExtendedL2:      h.IncompatibleFeatures&incompatExtendedL2 != 0,
		CompressionType: "zlib",
		DataFile:        h.DataFile,
	}
	in.Bitmaps, _ = img.bitmapInfosLocked()
	if h.Version == 2 {
		in.Compat = "0.10"
	}
	if h.CompressionType == 1 {
		in.CompressionType = "zstd"
	}
	if h.BackingFile != "" {
		in.FullBackingFilename = h.BackingFile
		if !filepath.IsAbs(h.BackingFile) {
			in.FullBackingFilename = filepath.Join(filepath.Dir(img.name), h.BackingFile)
		}
	}
	return in
}

// Close flushes the image, releases unused reserved clusters, clears the
// dirty bit, and closes the file and the backing chain.
func (img *Image) Close() error {
	img.lockQuiesced()
	if img.closed {
		img.mu.Unlock()
		return ErrClosed
	}
	img.mu.Unlock()
	var err error
	if !img.ReadOnly() {
		err = img.Flush()
		img.lockQuiesced()
		if err == nil && !img.ReadOnly() {
			err = img.storeBitmapsLocked()
		}
		if err == nil && !img.ReadOnly() {
			err = img.closeCleanLocked()
		}
		img.mu.Unlock()
	}
	img.lockQuiesced()
	img.closed = true
	img.mu.Unlock()
	if cerr := img.closeJournal(err == nil); err == nil {
		err = cerr
	}
	if !img.keepFile {
		if cerr := img.f.Close(); err == nil {
			err = cerr
		}
	}
	if img.backing != nil {
		if cerr := img.backing.Close(); err == nil {
			err = cerr
		}
	}
	return err
}

func ceilDiv(a, b int64) int64 { return (a + b - 1) / b }
