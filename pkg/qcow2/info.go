package qcow2

// Info describes an open image, with what `qemu-img info` prints.
type Info struct {
	Filename            string
	Format              string // "qcow2" or "raw"
	VirtualSize         int64
	ActualSize          int64 // bytes the host file occupies on disk
	ClusterSize         int64
	BackingFilename     string // as stored in the image
	FullBackingFilename string // as resolved on this host
	BackingFormat       string
	// The fields below are qcow2 "format specific" information.
	Compat          string // "1.1" or "0.10"
	LazyRefcounts   bool
	RefcountBits    int
	Corrupt         bool
	Dirty           bool
	ExtendedL2      bool
	CompressionType string // "zlib" or "zstd"
	DataFile        string
	Bitmaps         []BitmapInfo // persistent bitmaps, as stored
}
