package qcow2

import (
	"encoding/binary"
	"fmt"
)

// Persistent dirty bitmaps, on-disk layout (docs/interop/qcow2.rst,
// "Bitmaps extension" and "Bitmaps"): the header extension names a bitmap
// directory; each directory entry names a bitmap table; each table entry
// names one cluster of bitmap data. This file decodes and encodes the
// extension and the directory with QEMU's bounds; bitmap.go decides what
// the engine does with them.

const (
	bmeFlagInUse    = uint32(1) << 0
	bmeFlagAuto     = uint32(1) << 1
	bmeFlagsKnown   = bmeFlagInUse | bmeFlagAuto
	bitmapTypeDirty = 1

	minBitmapGranBits = 9
	maxBitmapGranBits = 31
	maxBitmapNameLen  = 1023
	bitmapExtLen      = 24
)

// bitmapExtHeader is the bitmaps header extension.
type bitmapExtHeader struct {
	n       uint32
	dirSize uint64
	dirOff  uint64
}

func decodeBitmapExt(b []byte, cs int64) (bitmapExtHeader, error) {
	if len(b) != bitmapExtLen {
		return bitmapExtHeader{}, errorf(ErrInvalid, "bitmaps extension is %d bytes, not %d", len(b), bitmapExtLen)
	}
	be := binary.BigEndian
	x := bitmapExtHeader{n: be.Uint32(b[0:]), dirSize: be.Uint64(b[8:]), dirOff: be.Uint64(b[16:])}
	switch {
	case be.Uint32(b[4:]) != 0:
		return x, errorf(ErrInvalid, "bitmaps extension: reserved field is not zero")
	case x.n == 0:
		return x, errorf(ErrInvalid, "bitmaps extension with zero bitmaps")
	case x.n > maxBitmaps:
		return x, errorf(ErrInvalid, "%d bitmaps, more than %d", x.n, maxBitmaps)
	case x.dirSize == 0 || x.dirSize > maxBitmapDirSize:
		return x, errorf(ErrInvalid, "bitmap directory size %d outside 1..%d", x.dirSize, maxBitmapDirSize)
	case x.dirOff == 0 || x.dirOff%uint64(cs) != 0 || x.dirOff > uint64(maxHostOffset):
		return x, errorf(ErrInvalid, "bitmap directory offset %#x invalid", x.dirOff)
	}
	return x, nil
}

func (x bitmapExtHeader) encode() []byte {
	b := make([]byte, bitmapExtLen)
	be := binary.BigEndian
	be.PutUint32(b[0:], x.n)
	be.PutUint64(b[8:], x.dirSize)
	be.PutUint64(b[16:], x.dirOff)
	return b
}

// bitmapEntry is one bitmap directory entry.
type bitmapEntry struct {
	name      string
	tableOff  uint64
	tableSize uint32 // entries
	flags     uint32
	typ       uint8
	granBits  uint8
	extra     []byte // extra data, preserved verbatim
}

// maintainable reports whether this engine understands the bitmap well
// enough to keep it consistent: a dirty tracking bitmap without extra data
// or flags it does not know (QEMU refuses anything else).
func (e *bitmapEntry) maintainable() bool {
	return e.typ == bitmapTypeDirty && len(e.extra) == 0 && e.flags&^bmeFlagsKnown == 0
}

func (e *bitmapEntry) inUse() bool   { return e.flags&bmeFlagInUse != 0 }
func (e *bitmapEntry) enabled() bool { return e.flags&bmeFlagAuto != 0 }

func bitmapEntryLen(nameLen, extraLen int) uint64 {
	return (bitmapDirEntLen + uint64(nameLen) + uint64(extraLen) + 7) &^ 7
}

// parseBitmapDir decodes a directory of n entries. virtualSize is the
// image's size in bytes (bitmaps that are not in use must cover it).
// Entries with a type, flags or extra data this engine does not know are
// returned (see maintainable); only structural damage is an error.
func parseBitmapDir(dir []byte, n uint32, cs int64, virtualSize uint64) ([]bitmapEntry, error) {
	be := binary.BigEndian
	var list []bitmapEntry
	pos := uint64(0)
	size := uint64(len(dir))
	for pos < size {
		if size-pos < bitmapDirEntLen {
			return nil, errorf(ErrInvalid, "bitmap directory entry at %d is truncated", pos)
		}
		if uint32(len(list)) >= n {
			return nil, errorf(ErrInvalid, "more bitmaps in the directory than the header's %d", n)
		}
		d := dir[pos:]
		e := bitmapEntry{
			tableOff:  be.Uint64(d[0:]),
			tableSize: be.Uint32(d[8:]),
			flags:     be.Uint32(d[12:]),
			typ:       d[16],
			granBits:  d[17],
		}
		nameLen := int(be.Uint16(d[18:]))
		extraLen := be.Uint32(d[20:])
		if uint64(extraLen) > size {
			return nil, errorf(ErrInvalid, "bitmap directory entry at %d overruns the directory", pos)
		}
		entLen := bitmapEntryLen(nameLen, int(extraLen))
		if entLen > size-pos {
			return nil, errorf(ErrInvalid, "bitmap directory entry at %d overruns the directory", pos)
		}
		e.extra = append([]byte(nil), d[bitmapDirEntLen:bitmapDirEntLen+uint64(extraLen)]...)
		e.name = string(d[bitmapDirEntLen+uint64(extraLen) : bitmapDirEntLen+uint64(extraLen)+uint64(nameLen)])
		if err := e.validate(cs, virtualSize); err != nil {
			return nil, err
		}
		list = append(list, e)
		pos += entLen
	}
	if uint32(len(list)) != n {
		return nil, errorf(ErrInvalid, "%d bitmaps in the directory, the header says %d", len(list), n)
	}
	return list, nil
}

// validate applies QEMU's check_dir_entry bounds that do not depend on
// understanding the bitmap's type.
func (e *bitmapEntry) validate(cs int64, virtualSize uint64) error {
	phys := uint64(e.tableSize) * uint64(cs)
	switch {
	case e.tableSize == 0 || e.tableSize > maxBitmapTable:
		return errorf(ErrInvalid, "bitmap %q: table size %d outside 1..%d", e.name, e.tableSize, maxBitmapTable)
	case e.tableOff == 0 || e.tableOff%uint64(cs) != 0 || e.tableOff > uint64(maxHostOffset):
		return errorf(ErrInvalid, "bitmap %q: table offset %#x invalid", e.name, e.tableOff)
	case e.granBits < minBitmapGranBits || e.granBits > maxBitmapGranBits:
		return errorf(ErrInvalid, "bitmap %q: granularity bits %d outside %d..%d", e.name, e.granBits, minBitmapGranBits, maxBitmapGranBits)
	case len(e.name) > maxBitmapNameLen:
		return errorf(ErrInvalid, "bitmap name of %d bytes (at most %d)", len(e.name), maxBitmapNameLen)
	case phys > maxBitmapPhys:
		return errorf(ErrInvalid, "bitmap %q: %d bytes of data (at most %d)", e.name, phys, maxBitmapPhys)
	case !e.inUse() && virtualSize > (phys*8)<<e.granBits:
		return errorf(ErrInvalid, "bitmap %q: table too small for the virtual size", e.name)
	}
	return nil
}

// encodeBitmapDir serialises entries as a bitmap directory.
func encodeBitmapDir(list []bitmapEntry) []byte {
	var size uint64
	for i := range list {
		size += bitmapEntryLen(len(list[i].name), len(list[i].extra))
	}
	dir := make([]byte, size)
	be := binary.BigEndian
	pos := uint64(0)
	for i := range list {
		e := &list[i]
		d := dir[pos:]
		be.PutUint64(d[0:], e.tableOff)
		be.PutUint32(d[8:], e.tableSize)
		be.PutUint32(d[12:], e.flags)
		d[16] = e.typ
		d[17] = e.granBits
		be.PutUint16(d[18:], uint16(len(e.name)))
		be.PutUint32(d[20:], uint32(len(e.extra)))
		copy(d[bitmapDirEntLen:], e.extra)
		copy(d[bitmapDirEntLen+len(e.extra):], e.name)
		pos += bitmapEntryLen(len(e.name), len(e.extra))
	}
	return dir
}

// bitmapTableClusters returns the number of data clusters (table entries)
// a bitmap of the given granularity needs for virtualSize bytes.
func bitmapTableClusters(virtualSize uint64, granBits uint8, cs int64) uint64 {
	bits := (virtualSize + uint64(1)<<granBits - 1) >> granBits
	bytes := (bits + 63) / 64 * 8
	return (bytes + uint64(cs) - 1) / uint64(cs)
}

// checkBitmapConstraints is QEMU's check_constraints_on_bitmap for a new
// or resized bitmap.
func checkBitmapConstraints(name string, granBits uint8, virtualSize uint64, cs int64) error {
	if granBits < minBitmapGranBits || granBits > maxBitmapGranBits {
		return errorf(ErrInvalid, "bitmap granularity must be a power of two between %d and %d bytes", 1<<minBitmapGranBits, uint64(1)<<maxBitmapGranBits)
	}
	if len(name) > maxBitmapNameLen {
		return errorf(ErrInvalid, "bitmap name exceeds %d characters", maxBitmapNameLen)
	}
	if name == "" {
		return errorf(ErrInvalid, "a bitmap needs a name")
	}
	n := bitmapTableClusters(virtualSize, granBits, cs)
	if n*uint64(cs) > maxBitmapPhys || n > maxBitmapTable {
		return errorf(ErrRange, "bitmap %q would need %d bytes; use a larger granularity", name, n*uint64(cs))
	}
	return nil
}

// readBitmapDir reads and decodes the directory the extension x names.
func readBitmapDir(f File, x bitmapExtHeader, cs int64, virtualSize uint64) ([]bitmapEntry, error) {
	fsize, err := f.Size()
	if err != nil {
		return nil, err
	}
	if x.dirOff > uint64(fsize) || x.dirSize > uint64(fsize)-x.dirOff {
		return nil, errorf(ErrInvalid, "bitmap directory at %#x (+%d bytes) is beyond the end of the file", x.dirOff, x.dirSize)
	}
	dir := make([]byte, x.dirSize)
	if err := readFull(f, dir, int64(x.dirOff)); err != nil {
		return nil, fmt.Errorf("reading the bitmap directory: %w", err)
	}
	return parseBitmapDir(dir, x.n, cs, virtualSize)
}

// BitmapsSize is the space `qemu-img measure` reserves for copying
// bitmaps of a disk of virtualSize bytes into an image with clusterSize
// clusters: every bitmap fully allocated, its table, and the directory.
func BitmapsSize(bitmaps []BitmapInfo, virtualSize, clusterSize int64) int64 {
	var total, dir int64
	for _, b := range bitmaps {
		if b.Granularity <= 0 {
			continue
		}
		bytes := ceilDiv(ceilDiv(virtualSize, b.Granularity), 8)
		clusters := ceilDiv(bytes, clusterSize)
		total += clusters*clusterSize + ceilDiv(clusters*8, clusterSize)*clusterSize
		dir += int64(bitmapEntryLen(len(b.Name), 0))
	}
	return total + ceilDiv(dir, clusterSize)*clusterSize
}
