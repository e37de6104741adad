package convert

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// Bounds and defaults of Options, as qemu-img convert has them.
const (
	// MaxSparseSize is qemu-img's bound on -S (MAX_BUF_SECTORS * 512).
	MaxSparseSize = 16 << 20
	// DefaultSparseSize is qemu-img's default -S.
	DefaultSparseSize = 4 << 10
	// MaxWorkers is qemu-img's bound on -m (MAX_COROUTINES).
	MaxWorkers = 16
	// DefaultWorkers is qemu-img's default -m.
	DefaultWorkers = 8
)

// ErrOptions is wrapped by every error Run returns for Options (or a
// source and target) that do not go together; nothing was written then.
var ErrOptions = errors.New("invalid convert options")

// Source is what Run reads: a qcow2.Disk (an Image with its backing
// chain, or a Raw file), or an internal snapshot (Snapshot).
type Source interface {
	io.ReaderAt
	Size() int64
	Map(off, n int64) ([]qcow2.Extent, error)
}

// Options are the choices of a copy. The zero value copies sparsely with
// DefaultWorkers workers, writing in guest order.
type Options struct {
	// SparseSize is the zero-detection block (qemu-img -S): every aligned
	// block of read data that is all zeros is not written. A multiple of
	// 512 up to MaxSparseSize; 0 means DefaultSparseSize.
	SparseSize int64
	// WriteAll writes every byte of the source as data, zeros included,
	// fully allocating the target (qemu-img -S 0).
	WriteAll bool
	// Existing says the target already holds content of its own
	// (qemu-img -n): everything the source reads, zeros included, is
	// written over it so that nothing of the old content shows through.
	Existing bool
	// Compress writes every cluster that is not all zeros as a compressed
	// cluster, with the target's compression type (qemu-img -c). The
	// target must be a new qcow2 image without a backing file.
	Compress bool
	// Workers is how many requests are read, zero-tested and compressed
	// in parallel (qemu-img -m), 1..MaxWorkers; 0 means DefaultWorkers.
	Workers int
	// OutOfOrder lets requests be written as soon as they are ready
	// (qemu-img -W). Without it they are written in guest order, so a
	// qcow2 target allocates its clusters in order and is the same file
	// byte for byte whatever Workers is.
	OutOfOrder bool
	// Progress, if set, hears how many guest bytes of total (the source's
	// size) are done. Calls are serialised, done never decreases, and the
	// last call of a copy that succeeds has done == total. It runs on the
	// copy's workers: keep it short.
	Progress func(done, total int64)
}

// normalize fills in the defaults and checks the bounds.
func (o Options) normalize() (Options, error) {
	if o.SparseSize == 0 {
		o.SparseSize = DefaultSparseSize
	}
	if o.Workers == 0 {
		o.Workers = DefaultWorkers
	}
	switch {
	case o.SparseSize < 0 || o.SparseSize%512 != 0 || o.SparseSize > MaxSparseSize:
		return o, fmt.Errorf("%w: sparse size %d is not a multiple of 512 up to %d", ErrOptions, o.SparseSize, MaxSparseSize)
	case o.Workers < 1 || o.Workers > MaxWorkers:
		return o, fmt.Errorf("%w: %d workers; between 1 and %d are allowed", ErrOptions, o.Workers, MaxWorkers)
	case o.Compress && o.Existing:
		return o, fmt.Errorf("%w: compression is not supported into an existing target", ErrOptions)
	}
	return o, nil
}

// mode is which copy loop Run uses.
// mapWindow is how much of the source one Map call covers: at one extent
// per 64 KiB cluster, about 3 MiB of extents. A multiple of every copy
// chunk. (A variable for tests, which copy in several windows.)
var mapWindow int64 = 4 << 30

// copyWindow copies [off, off+n) of src as mode m says.
func copyWindow(src Source, dst qcow2.Disk, m mode, o Options, cx copyCtx, off, n int64) error {
	if err := cx.pl.ctx.Err(); err != nil {
		return err
	}
	exts, err := src.Map(off, n)
	if err != nil {
		return fmt.Errorf("error while mapping the source: %w", err)
	}
	cx.lo, cx.hi = off, off+n
	cx.ra = newReadAhead(exts)
	defer cx.ra.close()
	switch m {
	case modeCompressed:
		return copyCompressed(src, dst.(*qcow2.Image), exts, cx)
	case modeExisting:
		return copyAll(src, dst, exts, cx)
	case modeDiff:
		return copyDiff(src, dst.(*qcow2.Image), exts, cx)
	}
	sparse := o.SparseSize
	if o.WriteAll {
		sparse = 0
	}
	return copyExtents(src, dst, exts, sparse, cx)
}

type mode int

const (
	modeSparse     mode = iota // a new target without a backing file
	modeExisting               // Options.Existing: write everything
	modeDiff                   // a new target over a backing file
	modeCompressed             // Options.Compress
)

// chooseMode picks the copy for dst, refusing targets it cannot fill
// correctly.
func chooseMode(dst qcow2.Disk, o Options) (mode, error) {
	img, isQcow2 := dst.(*qcow2.Image)
	named := isQcow2 && img.Info().BackingFilename != ""
	switch {
	case o.Compress && !isQcow2:
		return 0, fmt.Errorf("%w: compression needs a qcow2 target", ErrOptions)
	case o.Compress && named:
		return 0, fmt.Errorf("%w: compression into a target with a backing file is not supported", ErrOptions)
	case o.Compress:
		return modeCompressed, nil
	case o.Existing:
		return modeExisting, nil
	case named && img.Backing() == nil:
		// A sparse copy would leave the backing file's content showing
		// where the source reads zeros.
		return 0, fmt.Errorf("%w: the target names a backing file but was opened without it", ErrOptions)
	case named:
		return modeDiff, nil
	}
	return modeSparse, nil
}

// Run copies what src reads into dst, which the caller opened writable
// (created at src's size, unless Options.Existing) and still owns: Run
// flushes it before it returns, so what it wrote is durable, but does not
// close it. A qcow2 target with a backing file (opened with it) gets only
// the clusters that differ from what it reads already (qemu-img -B).
//
// Cancelling ctx stops the copy promptly: no new request starts, the ones
// in flight finish, and Run returns ctx.Err() without flushing. The target
// then holds part of the copy.
func Run(ctx context.Context, src Source, dst qcow2.Disk, opts Options) error {
	o, err := opts.normalize()
	if err != nil {
		return err
	}
	m, err := chooseMode(dst, o)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	size := src.Size()
	cx := copyCtx{
		pl:   pipeline{ctx: ctx, workers: o.Workers, outOfOrder: o.OutOfOrder},
		prog: newProgress(o.Progress, size),
	}
	if m != modeCompressed { // compressed writes sync each batch themselves
		cx.wb = newWriteBehind(dst.Info().Filename)
	}
	// The source is mapped a window at a time: a hostile image can make
	// its map one extent per cluster (a tiny file of a huge size), and
	// the whole map of a large disk would not fit in memory.
	for off := int64(0); off < size && err == nil; off += mapWindow {
		err = copyWindow(src, dst, m, o, cx, off, min(mapWindow, size-off))
	}
	cx.wb.close()
	if err != nil {
		return err
	}
	if err := dst.Flush(); err != nil {
		return fmt.Errorf("error while flushing the target: %w", err)
	}
	cx.prog.finish()
	return nil
}
