package qcow2

import (
	"encoding/binary"
	"fmt"
)

// Header is the qcow2 header and its extensions as found in cluster 0.
type Header struct {
	Version               uint32
	BackingFileOffset     uint64
	BackingFileSize       uint32
	ClusterBits           uint32
	Size                  uint64
	CryptMethod           uint32
	L1Size                uint32
	L1TableOffset         uint64
	RefcountTableOffset   uint64
	RefcountTableClusters uint32
	NbSnapshots           uint32
	SnapshotsOffset       uint64
	IncompatibleFeatures  uint64
	CompatibleFeatures    uint64
	AutoclearFeatures     uint64
	RefcountOrder         uint32
	HeaderLength          uint32
	CompressionType       uint8

	// extraFields holds header bytes past the fields this engine knows
	// (header_length > 112), preserved verbatim on rewrite.
	extraFields []byte

	BackingFile   string
	BackingFormat string
	DataFile      string
	FeatureNames  []FeatureName
	// Bitmaps is the raw bitmaps extension, preserved; nil when absent.
	Bitmaps []byte
	// unknownExts are extensions this engine does not interpret, kept in
	// order so that a rewrite preserves them.
	unknownExts   []headerExt
	hasEncryption bool
}

// FeatureName is one entry of the feature name table extension.
type FeatureName struct {
	Type uint8 // 0 incompatible, 1 compatible, 2 autoclear
	Bit  uint8
	Name string
}

type headerExt struct {
	typ  uint32
	data []byte
}

const (
	v2HeaderLen = 72
	v3HeaderLen = 104
	// fullHeaderLen includes compression_type and its padding.
	fullHeaderLen = 112
)

// Offsets of header fields that are updated in place.
const (
	hdrOffSize          = 24
	hdrOffL1            = 36 // l1_size (4) + l1_table_offset (8)
	hdrOffRefcountTable = 48 // refcount_table_offset (8) + clusters (4)
	hdrOffIncompat      = 72
	hdrOffAutoclear     = 88
	hdrOffSnapshots     = 60 // nb_snapshots (4) + snapshots_offset (8)
)

func (h *Header) clusterSize() int64 { return int64(1) << h.ClusterBits }

// parseHeader decodes and validates the header in buf, which holds the
// whole of cluster 0 (or the whole file if it is shorter).
func parseHeader(buf []byte) (*Header, error) {
	if len(buf) < v2HeaderLen {
		return nil, fmt.Errorf("%w: file too short for a qcow2 header", ErrInvalid)
	}
	be := binary.BigEndian
	if be.Uint32(buf[0:]) != qcowMagic {
		return nil, fmt.Errorf("%w: not a qcow2 image (bad magic)", ErrInvalid)
	}
	h := &Header{
		Version:               be.Uint32(buf[4:]),
		BackingFileOffset:     be.Uint64(buf[8:]),
		BackingFileSize:       be.Uint32(buf[16:]),
		ClusterBits:           be.Uint32(buf[20:]),
		Size:                  be.Uint64(buf[24:]),
		CryptMethod:           be.Uint32(buf[32:]),
		L1Size:                be.Uint32(buf[36:]),
		L1TableOffset:         be.Uint64(buf[40:]),
		RefcountTableOffset:   be.Uint64(buf[48:]),
		RefcountTableClusters: be.Uint32(buf[56:]),
		NbSnapshots:           be.Uint32(buf[60:]),
		SnapshotsOffset:       be.Uint64(buf[64:]),
	}
	if h.Version != 2 && h.Version != 3 {
		return nil, fmt.Errorf("%w: unsupported qcow2 version %d", ErrUnsupported, h.Version)
	}
	if h.ClusterBits < minClusterBits || h.ClusterBits > maxClusterBits {
		return nil, fmt.Errorf("%w: cluster_bits %d outside %d..%d", ErrInvalid, h.ClusterBits, minClusterBits, maxClusterBits)
	}
	cs := h.clusterSize()
	if h.Version == 2 {
		h.RefcountOrder = 4
		h.HeaderLength = v2HeaderLen
	} else {
		if len(buf) < v3HeaderLen {
			return nil, fmt.Errorf("%w: file too short for a version 3 header", ErrInvalid)
		}
		h.IncompatibleFeatures = be.Uint64(buf[72:])
		h.CompatibleFeatures = be.Uint64(buf[80:])
		h.AutoclearFeatures = be.Uint64(buf[88:])
		h.RefcountOrder = be.Uint32(buf[96:])
		h.HeaderLength = be.Uint32(buf[100:])
		if h.HeaderLength < v3HeaderLen || h.HeaderLength%8 != 0 && h.HeaderLength != v3HeaderLen {
			return nil, fmt.Errorf("%w: header_length %d invalid", ErrInvalid, h.HeaderLength)
		}
		if int64(h.HeaderLength) > cs || int(h.HeaderLength) > len(buf) {
			return nil, fmt.Errorf("%w: header_length %d exceeds the first cluster", ErrInvalid, h.HeaderLength)
		}
		if h.HeaderLength > v3HeaderLen {
			h.CompressionType = buf[104]
		}
		if h.HeaderLength > fullHeaderLen {
			h.extraFields = append([]byte(nil), buf[fullHeaderLen:h.HeaderLength]...)
		}
	}
	if h.RefcountOrder > maxRefcountOrder {
		return nil, fmt.Errorf("%w: refcount_order %d > %d", ErrInvalid, h.RefcountOrder, maxRefcountOrder)
	}
	if h.Size > uint64(maxImageSize) {
		return nil, fmt.Errorf("%w: virtual size %d too large", ErrInvalid, h.Size)
	}
	if h.CryptMethod != 0 {
		return nil, fmt.Errorf("%w: encrypted images (crypt_method %d)", ErrUnsupported, h.CryptMethod)
	}
	if unknown := h.IncompatibleFeatures &^ incompatKnown; unknown != 0 {
		return nil, fmt.Errorf("%w: unknown incompatible feature bits %#x", ErrUnsupported, unknown)
	}
	if h.IncompatibleFeatures&incompatCompression == 0 && h.CompressionType != 0 {
		return nil, fmt.Errorf("%w: compression_type %d set without the compression type feature bit", ErrInvalid, h.CompressionType)
	}
	if h.CompressionType > 1 {
		return nil, fmt.Errorf("%w: unknown compression_type %d", ErrUnsupported, h.CompressionType)
	}
	if err := h.parseExtensions(buf); err != nil {
		return nil, err
	}
	if h.BackingFileOffset != 0 {
		if h.BackingFileSize > maxBackingNameLen || h.BackingFileSize == 0 {
			return nil, fmt.Errorf("%w: backing file name length %d", ErrInvalid, h.BackingFileSize)
		}
		end := h.BackingFileOffset + uint64(h.BackingFileSize)
		if end > uint64(cs) || end > uint64(len(buf)) {
			return nil, fmt.Errorf("%w: backing file name outside the first cluster", ErrInvalid)
		}
		h.BackingFile = string(buf[h.BackingFileOffset:end])
	}
	if h.IncompatibleFeatures&incompatDataFile != 0 && h.DataFile == "" {
		return nil, fmt.Errorf("%w: external data file bit set without a data file name", ErrInvalid)
	}
	if h.hasEncryption {
		return nil, fmt.Errorf("%w: full disk encryption header", ErrUnsupported)
	}
	return h, nil
}

func (h *Header) parseExtensions(buf []byte) error {
	be := binary.BigEndian
	off := uint64(h.HeaderLength)
	limit := uint64(min(int64(len(buf)), h.clusterSize()))
	if h.BackingFileOffset != 0 && h.BackingFileOffset < limit {
		limit = max(off, h.BackingFileOffset)
	}
	for {
		if off+8 > limit {
			// QEMU accepts a header without an end marker when the
			// extension area is exhausted.
			return nil
		}
		typ := be.Uint32(buf[off:])
		length := uint64(be.Uint32(buf[off+4:]))
		off += 8
		if typ == extEnd {
			return nil
		}
		if length > limit-off {
			return fmt.Errorf("%w: header extension %#x overruns the first cluster", ErrInvalid, typ)
		}
		data := buf[off : off+length]
		switch typ {
		case extBackingFormat:
			h.BackingFormat = string(data)
		case extDataFile:
			h.DataFile = string(data)
		case extFeatureNames:
			for i := 0; i+48 <= len(data); i += 48 {
				name := data[i+2 : i+48]
				if j := indexByte(name, 0); j >= 0 {
					name = name[:j]
				}
				h.FeatureNames = append(h.FeatureNames, FeatureName{Type: data[i], Bit: data[i+1], Name: string(name)})
			}
		case extBitmaps:
			h.Bitmaps = append([]byte(nil), data...)
		case extEncryption:
			h.hasEncryption = true
		default:
			h.unknownExts = append(h.unknownExts, headerExt{typ: typ, data: append([]byte(nil), data...)})
		}
		off += (length + 7) &^ 7
	}
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

// defaultFeatureNames is the feature name table this engine writes.
var defaultFeatureNames = []FeatureName{
	{0, 0, "dirty bit"},
	{0, 1, "corrupt bit"},
	{0, 2, "external data file"},
	{0, 3, "compression type"},
	{0, 4, "extended L2 entries"},
	{1, 0, "lazy refcounts"},
	{2, 0, "bitmaps"},
	{2, 1, "raw external data"},
}

// encode serialises the header, its extensions and the backing file name
// into one cluster-sized buffer. It fails if they do not fit in cluster 0.
func (h *Header) encode() ([]byte, error) {
	cs := h.clusterSize()
	buf := make([]byte, cs)
	be := binary.BigEndian
	be.PutUint32(buf[0:], qcowMagic)
	be.PutUint32(buf[4:], h.Version)
	be.PutUint32(buf[20:], h.ClusterBits)
	be.PutUint64(buf[24:], h.Size)
	be.PutUint32(buf[32:], h.CryptMethod)
	be.PutUint32(buf[36:], h.L1Size)
	be.PutUint64(buf[40:], h.L1TableOffset)
	be.PutUint64(buf[48:], h.RefcountTableOffset)
	be.PutUint32(buf[56:], h.RefcountTableClusters)
	be.PutUint32(buf[60:], h.NbSnapshots)
	be.PutUint64(buf[64:], h.SnapshotsOffset)
	off := int64(v2HeaderLen)
	if h.Version >= 3 {
		hl := int64(fullHeaderLen + len(h.extraFields))
		h.HeaderLength = uint32(hl)
		be.PutUint64(buf[72:], h.IncompatibleFeatures)
		be.PutUint64(buf[80:], h.CompatibleFeatures)
		be.PutUint64(buf[88:], h.AutoclearFeatures)
		be.PutUint32(buf[96:], h.RefcountOrder)
		be.PutUint32(buf[100:], h.HeaderLength)
		buf[104] = h.CompressionType
		copy(buf[fullHeaderLen:], h.extraFields)
		off = hl
	}
	var exts []headerExt
	if h.BackingFormat != "" {
		exts = append(exts, headerExt{extBackingFormat, []byte(h.BackingFormat)})
	}
	if h.DataFile != "" {
		exts = append(exts, headerExt{extDataFile, []byte(h.DataFile)})
	}
	if h.Bitmaps != nil {
		exts = append(exts, headerExt{extBitmaps, h.Bitmaps})
	}
	exts = append(exts, h.unknownExts...)
	extLen := func(e []headerExt) int64 {
		n := int64(8) // end marker
		for _, x := range e {
			n += 8 + (int64(len(x.data))+7)&^7
		}
		return n
	}
	names := h.FeatureNames
	if h.Version >= 3 && len(names) == 0 {
		names = defaultFeatureNames
	}
	if h.Version >= 3 && len(names) > 0 {
		ft := make([]byte, 48*len(names))
		for i, fn := range names {
			ft[i*48] = fn.Type
			ft[i*48+1] = fn.Bit
			copy(ft[i*48+2:i*48+48], fn.Name)
		}
		withNames := append(append([]headerExt(nil), exts...), headerExt{extFeatureNames, ft})
		// The table is informational: drop it when small clusters leave no room.
		if off+extLen(withNames)+int64(len(h.BackingFile)) <= cs {
			exts = withNames
		}
	}
	if off+extLen(exts)+int64(len(h.BackingFile)) > cs {
		return nil, fmt.Errorf("%w: header, extensions and backing file name do not fit in one %d-byte cluster", ErrInvalid, cs)
	}
	for _, e := range exts {
		be.PutUint32(buf[off:], e.typ)
		be.PutUint32(buf[off+4:], uint32(len(e.data)))
		copy(buf[off+8:], e.data)
		off += 8 + (int64(len(e.data))+7)&^7
	}
	off += 8 // end marker (zeros)
	if h.BackingFile != "" {
		h.BackingFileOffset = uint64(off)
		h.BackingFileSize = uint32(len(h.BackingFile))
		copy(buf[off:], h.BackingFile)
	} else {
		h.BackingFileOffset, h.BackingFileSize = 0, 0
	}
	be.PutUint64(buf[8:], h.BackingFileOffset)
	be.PutUint32(buf[16:], h.BackingFileSize)
	return buf, nil
}
