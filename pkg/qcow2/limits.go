package qcow2

// Bounds on every size read from an image, from QEMU's block/qcow2.h. Nothing
// is allocated from an image field before it has been checked against these.
const (
	minClusterBits = 9
	maxClusterBits = 21

	maxL1Bytes            = 32 << 20 // QCOW_MAX_L1_SIZE
	maxRefcountTableBytes = 8 << 20  // QCOW_MAX_REFTABLE_SIZE
	maxSnapshotTableBytes = 64 << 20 // QCOW_MAX_SNAPSHOTS_SIZE
	maxSnapshots          = 65536    // QCOW_MAX_SNAPSHOTS
	maxBackingNameLen     = 1023
	maxChainDepth         = 64
	maxRefcountOrder      = 6

	// maxImageSize is QEMU's QCOW_MAX_DISK_SIZE-free bound for guest sizes:
	// offsets must stay representable in the 56-bit L2 offset field.
	maxImageSize = int64(1) << 56
	// maxHostOffset bounds any host offset stored in L1/L2/refcount entries.
	maxHostOffset = int64(1) << 56
)

// Header magic and extension types (docs/interop/qcow2.rst).
const (
	qcowMagic = 0x514649fb

	extEnd           = 0x00000000
	extBackingFormat = 0xe2792aca
	extFeatureNames  = 0x6803f857
	extBitmaps       = 0x23852875
	extEncryption    = 0x0537be77
	extDataFile      = 0x44415441
)

// Feature bits.
const (
	incompatDirty       = 1 << 0
	incompatCorrupt     = 1 << 1
	incompatDataFile    = 1 << 2
	incompatCompression = 1 << 3
	incompatExtendedL2  = 1 << 4
	// incompatJournal: mappings live in the image's write journal only
	// (journal.go). The bit is csi-qcow2's, the highest, far from QEMU's
	// assignments; QEMU refuses an image with a bit it does not know,
	// which is what such an image needs.
	incompatJournal = 1 << 63
	incompatKnown   = incompatDirty | incompatCorrupt | incompatDataFile | incompatCompression | incompatExtendedL2 | incompatJournal

	compatLazyRefcounts = 1 << 0

	autoclearBitmaps     = 1 << 0
	autoclearDataFileRaw = 1 << 1
)

// L1/L2 entry bits.
const (
	oflagCopied     = uint64(1) << 63
	oflagCompressed = uint64(1) << 62
	oflagZero       = uint64(1) << 0
	l1OffsetMask    = uint64(0x00fffffffffffe00)
	l2OffsetMask    = uint64(0x00fffffffffffe00)
	l1ReservedMask  = uint64(0x7f000000000001ff)
	l2ReservedMask  = uint64(0x3f000000000001fe)
	refTableOffMask = uint64(0xfffffffffffffe00)
)
