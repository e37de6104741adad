package qcow2

import "context"

// Options control how an image is opened.
type Options struct {
	// ReadOnly opens the image (and always its backing chain) read-only.
	ReadOnly bool
	// Backing says which files named inside the image may be opened.
	Backing BackingPolicy
	// NoBacking opens the image without its backing chain: unallocated
	// clusters read as zeros. Used by check, info and unsafe rebase.
	NoBacking bool
	// L2CacheBytes sizes the L2 table cache (4 KiB slices); 0 picks enough
	// to map the whole disk, at most 8 MiB (a 64 GiB disk at 64 KiB
	// clusters). At least 32 slices are cached whatever the setting.
	L2CacheBytes int64
	// RefcountCacheBytes sizes the refcount block cache (whole blocks); 0
	// picks a quarter of the L2 cache, at least 4 blocks.
	RefcountCacheBytes int64
	// NoAutoRepair opens a dirty image without rebuilding its refcounts
	// (it is then read-only). `img check` uses it to report what it finds.
	NoAutoRepair bool
	// Journal lets a copy-on-write write (the first write into a cluster
	// of an overlay, say) return without waiting for an fdatasync: its
	// mapping waits in a write journal beside the image (JournalPath)
	// until the next Flush (journal.go). Open only; it applies to
	// writable version 3 images on Linux.
	Journal bool
	// ForceShare opens a read-only image even while another program
	// writes it, like qemu-img -U (--force-share): only the
	// consistent-read lock is taken, which no writer refuses, and nothing
	// is refused. What such an open reads may be inconsistent (the writer
	// changes the image underneath it). It applies to the backing chain
	// too; a writable open with it is refused.
	ForceShare bool
	// NoLock opens the image and its backing chain without taking or
	// checking any image lock (QEMU's file.locking=off), for callers that
	// keep writers apart themselves. The journal lock is still taken.
	NoLock bool
	// MemoryBudget bounds the metadata an open holds in memory for the
	// image and its whole backing chain, summed over the layers: L1 and
	// refcount tables, the overlap map, snapshot L1 ranges, cache
	// capacities, the read mirror and bitmaps (open_budget.go). Past it
	// the open fails with ErrLimit before allocating that layer's tables.
	// 0 means DefaultMemoryBudget; a negative value means no bound.
	MemoryBudget int64

	// Progress, if set, hears how the long steps of an open go (the
	// refcount rebuild of a dirty image; progress.go).
	Progress func(Progress)

	// ctx is OpenContext's, nil for Open.
	ctx context.Context
	// chain is what an open shares with the opens of its backing files
	// (open_chain.go); set during the open only.
	chain *openChain
	// journalFile is the journal Open opened for openFile (tests set it
	// through export_test.go); journalPath is its path; bootID stands in
	// for the host's boot identity in tests.
	journalFile File
	journalPath string
	bootID      *[16]byte
	// io stands between the engine and the files it opens by path
	// (tests: fault injection, export_test.go); nil is the host's.
	io *fileHooks
}

// Preallocation modes, as qemu-img spells them.
const (
	PreallocOff      = "off"
	PreallocMetadata = "metadata"
	PreallocFalloc   = "falloc"
	PreallocFull     = "full"
)

// CreateOptions mirror qemu-img create -f qcow2 -o ....
type CreateOptions struct {
	Size int64
	// ClusterSize in bytes, a power of two 512..2 MiB; 0 means 64 KiB.
	ClusterSize int64
	// RefcountBits is 1, 2, 4, 8, 16, 32 or 64; 0 means 16.
	RefcountBits int
	// Compat is "1.1" (version 3, default) or "0.10" (version 2).
	Compat        string
	LazyRefcounts bool
	// CompressionType is "zlib" (default) or "zstd" (needs compat 1.1);
	// it is what WriteCompressed compresses with.
	CompressionType string
	// Preallocation is one of the Prealloc* constants; "" means off.
	Preallocation string
	// ExtendedL2 stores 128-bit L2 entries that split each cluster into
	// 32 subclusters (qemu-img's extended_l2=on): needs compat 1.1 and a
	// cluster size of at least 16 KiB. Only these images may combine
	// preallocation with a backing file (preallocated subclusters stay
	// unallocated and read through).
	ExtendedL2 bool
	// BackingFile is stored verbatim in the image; BackingFormat is
	// "qcow2" or "raw" (probed from the file when empty).
	BackingFile   string
	BackingFormat string
	// Backing is the policy used to open BackingFile at create time (to
	// take the size from it when Size is 0, and to probe its format).
	Backing BackingPolicy
	// Unsafe stores BackingFile without opening it (qemu-img create -u);
	// BackingFormat and Size must then be given.
	Unsafe bool
}

// Extent is one run of the guest address space with uniform allocation,
// as `qemu-img map` reports it.
type Extent struct {
	Start  int64
	Length int64
	// Data: the range is allocated somewhere in the chain (reads are not
	// known to be zero). Zero: the range reads as zeros.
	Data bool
	Zero bool
	// Present: some layer of the chain defines the range (allocated or a
	// zero cluster); false where every layer leaves it unallocated.
	Present bool
	// Depth is the chain layer that provides the range (0 = this image);
	// for unallocated-everywhere ranges it is the chain length.
	Depth int
	// Offset is the host offset in the providing layer's file, -1 if none.
	Offset int64
	// Compressed marks ranges stored in compressed clusters.
	Compressed bool
	// File is the file name of the providing layer ("" when none).
	File string
}

// longRun is the open's cancellation and progress for its long steps.
func (o Options) longRun() longRun { return longRun{ctx: o.ctx, progress: o.Progress} }
