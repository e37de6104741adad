package qcow2

import (
	"fmt"
	"math/bits"
	"os"
)

// Create makes a new qcow2 image at path; it refuses to overwrite a file.
func Create(path string, opts CreateOptions) error {
	fh, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	f := &osFile{f: fh, canPunch: true}
	// The new file is locked as any writer's while it is formatted, so
	// that no one opens it half written. (Should someone have locked it
	// already, it is theirs now: it is left alone.)
	if err := f.setLock(lockWriter); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := CreateFile(f, path, opts); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}

// CreateFile formats the empty file f as a qcow2 image. name is the image's
// path, used to resolve BackingFile. f stays open and owned by the caller.
func CreateFile(f File, name string, opts CreateOptions) error {
	o, err := normalizeCreate(opts)
	if err != nil {
		return err
	}
	if o.BackingFile != "" && !o.Unsafe {
		if err := probeBackingForCreate(name, f, &o); err != nil {
			return err
		}
	}
	size := ceilDiv(o.Size, 512) * 512
	if size > maxImageSize {
		return fmt.Errorf("%w: size %d is too large", ErrRange, o.Size)
	}
	h := &Header{
		Version:               3,
		ClusterBits:           uint32(bits.TrailingZeros64(uint64(o.ClusterSize))),
		RefcountTableOffset:   uint64(o.ClusterSize),
		RefcountTableClusters: 1,
		RefcountOrder:         uint32(bits.TrailingZeros(uint(o.RefcountBits))),
		BackingFile:           o.BackingFile,
		BackingFormat:         o.BackingFormat,
	}
	if o.Compat == "0.10" {
		h.Version = 2
	}
	if o.LazyRefcounts {
		h.CompatibleFeatures |= compatLazyRefcounts
	}
	if o.CompressionType == "zstd" {
		h.CompressionType = 1
		h.IncompatibleFeatures |= incompatCompression
	}
	if o.ExtendedL2 {
		h.IncompatibleFeatures |= incompatExtendedL2
	}
	hbuf, err := h.encode()
	if err != nil {
		return err
	}
	cs := o.ClusterSize
	// Cluster 0: header; 1: refcount table; 2: the first refcount block,
	// counting clusters 0-2.
	rt := make([]byte, cs)
	putU64s(rt, []uint64{uint64(2 * cs)})
	blk := make([]byte, cs)
	for c := uint64(0); c < 3; c++ {
		setRefcount(blk, c, h.RefcountOrder, 1)
	}
	if err := f.Truncate(0); err != nil {
		return err
	}
	for i, b := range [][]byte{hbuf, rt, blk} {
		if _, err := f.WriteAt(b, int64(i)*cs); err != nil {
			return err
		}
	}
	if err := f.Sync(); err != nil {
		return err
	}
	img, err := openFile(f, name, Options{NoBacking: true}, 0)
	if err != nil {
		return err
	}
	img.keepFile = true
	if err := img.Resize(size); err != nil {
		img.Close()
		return err
	}
	if o.Preallocation != PreallocOff {
		if err := img.preallocate(o.Preallocation); err != nil {
			img.Close()
			return err
		}
	}
	return img.Close()
}

func normalizeCreate(o CreateOptions) (CreateOptions, error) {
	if o.ClusterSize == 0 {
		o.ClusterSize = 64 << 10
	}
	if o.RefcountBits == 0 {
		o.RefcountBits = 16
	}
	if o.Compat == "" {
		o.Compat = "1.1"
	}
	if o.Preallocation == "" {
		o.Preallocation = PreallocOff
	}
	if o.CompressionType == "" {
		o.CompressionType = "zlib"
	}
	cs := o.ClusterSize
	switch {
	case cs < 1<<minClusterBits || cs > 1<<maxClusterBits || cs&(cs-1) != 0:
		return o, fmt.Errorf("%w: cluster size %d must be a power of two between 512 and 2M", ErrInvalid, cs)
	case o.RefcountBits < 1 || o.RefcountBits > 64 || o.RefcountBits&(o.RefcountBits-1) != 0:
		return o, fmt.Errorf("%w: refcount_bits %d must be a power of two up to 64", ErrInvalid, o.RefcountBits)
	case o.Compat != "1.1" && o.Compat != "0.10" && o.Compat != "v3" && o.Compat != "v2":
		return o, fmt.Errorf("%w: compat %q must be 0.10 or 1.1", ErrInvalid, o.Compat)
	case o.Size < 0:
		return o, fmt.Errorf("%w: negative size", ErrInvalid)
	}
	if o.Compat == "v3" {
		o.Compat = "1.1"
	} else if o.Compat == "v2" {
		o.Compat = "0.10"
	}
	if o.Compat == "0.10" {
		if o.LazyRefcounts {
			return o, fmt.Errorf("%w: lazy refcounts need compat 1.1", ErrInvalid)
		}
		if o.RefcountBits != 16 {
			return o, fmt.Errorf("%w: compat 0.10 images have 16-bit refcounts only", ErrInvalid)
		}
	}
	switch o.CompressionType {
	case "zlib":
	case "zstd":
		if o.Compat == "0.10" {
			return o, fmt.Errorf("%w: compression_type=zstd needs compat 1.1", ErrInvalid)
		}
	default:
		return o, fmt.Errorf("%w: compression_type %q (zlib or zstd)", ErrInvalid, o.CompressionType)
	}
	switch o.Preallocation {
	case PreallocOff, PreallocMetadata, PreallocFalloc, PreallocFull:
	default:
		return o, fmt.Errorf("%w: preallocation %q (off, metadata, falloc or full)", ErrInvalid, o.Preallocation)
	}
	if o.BackingFile == "" && o.BackingFormat != "" {
		return o, fmt.Errorf("%w: a backing format without a backing file", ErrInvalid)
	}
	if o.Unsafe && o.BackingFile != "" && o.BackingFormat == "" {
		return o, fmt.Errorf("%w: an unchecked backing file needs its format", ErrInvalid)
	}
	if o.ExtendedL2 {
		if o.Compat == "0.10" {
			return o, fmt.Errorf("%w: extended L2 entries need compat 1.1", ErrInvalid)
		}
		if cs < 1<<minExtendedClusterBits {
			return o, fmt.Errorf("%w: extended L2 entries need a cluster size of at least %d bytes", ErrInvalid, 1<<minExtendedClusterBits)
		}
	} else if o.BackingFile != "" && o.Preallocation != PreallocOff {
		return o, fmt.Errorf("%w: preallocation with a backing file needs extended L2 entries", ErrInvalid)
	}
	return o, nil
}

// probeBackingForCreate opens the backing file under the create policy to
// learn its format and, when no size was given, its size. f, the new
// image, is the chain's top (name may still be another file's path).
func probeBackingForCreate(name string, f File, o *CreateOptions) error {
	if o.BackingFormat != "" && o.BackingFormat != "qcow2" && o.BackingFormat != "raw" {
		return fmt.Errorf("%w: backing format %q", ErrUnsupported, o.BackingFormat)
	}
	// Force-share, as qemu-img create: only the header is read, and the
	// backing file may well be an image a writer has open (the top of a
	// running volume that a new overlay will stack on once it is frozen).
	opts := Options{ReadOnly: true, ForceShare: true, Backing: o.Backing}
	ch, err := newChainAt(name, f, opts)
	if err != nil {
		return err
	}
	opts.chain = ch
	d, err := openBacking(name, o.BackingFile, o.BackingFormat, opts, 1)
	if err != nil {
		return fmt.Errorf("could not open backing file %q: %w", o.BackingFile, err)
	}
	defer d.Close()
	if o.BackingFormat == "" {
		o.BackingFormat = d.Info().Format
	}
	if o.Size == 0 {
		o.Size = d.Size()
	}
	return nil
}
