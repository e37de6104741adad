package qcow2

import (
	"encoding/binary"
	"fmt"
	"math"
)

// The internal snapshot table (docs/interop/qcow2.rst, "Snapshots"): a
// sequence of 8-byte aligned entries, each a 40-byte header, extra data,
// the snapshot ID and its name.
const (
	snapshotHeaderLen = 40
	// snapshotExtraLen is the extra data QEMU 7.2 knows and writes:
	// vm_state_size_large, disk_size, icount.
	snapshotExtraLen = 24
	// snapshotMinV3Extra: version 3 entries must carry at least
	// vm_state_size_large and disk_size.
	snapshotMinV3Extra = 16
	// maxSnapshotExtraData is QCOW_MAX_SNAPSHOT_EXTRA_DATA.
	maxSnapshotExtraData = 1024
	// maxSnapshotL1Entries bounds a snapshot's L1 table (QCOW_MAX_L1_SIZE).
	maxSnapshotL1Entries = maxL1Bytes / 8
)

// snapshotEntry is one parsed entry of the snapshot table.
type snapshotEntry struct {
	L1Offset    uint64
	L1Size      uint32
	ID          string
	Name        string
	DateSec     uint32
	DateNsec    uint32
	VMClockNsec uint64
	// VMStateSize is vm_state_size, or vm_state_size_large when present.
	VMStateSize uint64
	// DiskSize is the virtual size when the snapshot was taken (the
	// image's current size when the entry does not record it).
	DiskSize uint64
	// ICount is the instruction count for record/replay, ^0 if absent.
	ICount uint64
	// ExtraDataSize is extra_data_size as stored (in repair mode it may
	// have been cut to maxSnapshotExtraData).
	ExtraDataSize uint32
	// UnknownExtra holds the extra data past the fields above, preserved
	// on rewrite.
	UnknownExtra []byte
}

// snapshotTable is the parsed snapshot table.
type snapshotTable struct {
	Offset  uint64
	Entries []snapshotEntry
	// Size is the number of bytes from Offset to the end of the last
	// entry (what the table occupies, for refcounting).
	Size int64
	// Found only when parsing in repair mode:
	// Discarded counts entries dropped off the end because the table
	// exceeded maxSnapshotTableBytes; ExtraDropped counts entries whose
	// extra data was cut to maxSnapshotExtraData.
	Discarded    int
	ExtraDropped int
	// Notes are QEMU's messages for those repairs.
	Notes []string
}

// snapshotTableReader reads the table through a window so that a long table
// of small entries does not cost one read per field.
type snapshotTableReader struct {
	f      File
	winOff uint64
	win    []byte
}

const snapshotWindow = 64 << 10

func (r *snapshotTableReader) read(p []byte, off uint64) error {
	for len(p) > 0 {
		if r.win == nil || off < r.winOff || off >= r.winOff+uint64(len(r.win)) {
			if off > math.MaxInt64-snapshotWindow {
				return fmt.Errorf("%w: snapshot table offset %#x out of range", ErrInvalid, off)
			}
			if r.win == nil {
				r.win = make([]byte, snapshotWindow)
			}
			r.winOff = off
			if err := readFull(r.f, r.win, int64(off)); err != nil {
				return err
			}
		}
		n := copy(p, r.win[off-r.winOff:])
		p = p[n:]
		off += uint64(n)
	}
	return nil
}

// validateTablePointer mirrors qcow2_validate_table: a table of n entries
// of entryLen bytes at off must not exceed maxBytes, must be cluster
// aligned and must not overflow int64.
func validateTablePointer(what string, off, n, entryLen, maxBytes uint64, clusterSize int64) error {
	if n > maxBytes/entryLen {
		return fmt.Errorf("%w: %s too large", ErrInvalid, what)
	}
	if math.MaxInt64-n*entryLen < off || off&uint64(clusterSize-1) != 0 {
		return fmt.Errorf("%w: %s offset invalid", ErrInvalid, what)
	}
	return nil
}

// loadSnapshotTable parses n entries at off, as QEMU does. virtualSize is
// the image's size, recorded as DiskSize for entries that lack it. With
// repair set, like `qemu-img check -r all`, too much extra data is cut
// and a table longer than maxSnapshotTableBytes loses its overhanging
// entries (counted in ExtraDropped and Discarded) instead of failing.
// It does not validate the entries' L1 tables; readSnapshotTable does.
func loadSnapshotTable(f File, off uint64, n uint32, clusterSize int64, virtualSize uint64, repair bool) (*snapshotTable, error) {
	c := entryCollector{n: n}
	t, err := scanSnapshotTable(f, off, n, clusterSize, virtualSize, repair, c.keep)
	if err != nil {
		return nil, err
	}
	t.Entries = c.entries
	return t, nil
}

// scanSnapshotTable is loadSnapshotTable handing each entry to visit (in
// table order, i its index) instead of keeping it: the table's Entries
// stay nil, and memory stays one entry however long the table.
func scanSnapshotTable(f File, off uint64, n uint32, clusterSize int64, virtualSize uint64, repair bool, visit func(i int, e *snapshotEntry) error) (*snapshotTable, error) {
	if err := validateTablePointer("snapshot table", off, uint64(n), snapshotHeaderLen, snapshotHeaderLen*maxSnapshots, clusterSize); err != nil {
		return nil, err
	}
	t := &snapshotTable{Offset: off}
	if n == 0 {
		return t, nil
	}
	r := &snapshotTableReader{f: f}
	be := binary.BigEndian
	pos := off
	var tableLen uint64
	var hdr [snapshotHeaderLen]byte
	var extra [snapshotExtraLen]byte
	var text [math.MaxUint16]byte // an id or a name
	// One entry for the whole scan: visit copies what it keeps, and an
	// entry per iteration would escape to the heap 65536 times.
	var e snapshotEntry
	for i := uint32(0); i < n; i++ {
		preEntry := pos
		tableLen = (tableLen + 7) &^ 7
		pos = (pos + 7) &^ 7
		if err := r.read(hdr[:], pos); err != nil {
			return nil, fmt.Errorf("failed to read snapshot table: %w", err)
		}
		pos += snapshotHeaderLen
		e = snapshotEntry{
			L1Offset:      be.Uint64(hdr[0:]),
			L1Size:        be.Uint32(hdr[8:]),
			DateSec:       be.Uint32(hdr[16:]),
			DateNsec:      be.Uint32(hdr[20:]),
			VMClockNsec:   be.Uint64(hdr[24:]),
			VMStateSize:   uint64(be.Uint32(hdr[32:])),
			ExtraDataSize: be.Uint32(hdr[36:]),
			ICount:        ^uint64(0),
			DiskSize:      virtualSize,
		}
		idLen := uint64(be.Uint16(hdr[12:]))
		nameLen := uint64(be.Uint16(hdr[14:]))
		truncate := false
		if e.ExtraDataSize > maxSnapshotExtraData {
			if !repair {
				return nil, fmt.Errorf("%w: too much extra metadata in snapshot table entry %d (%d > %d bytes)",
					ErrInvalid, i, e.ExtraDataSize, maxSnapshotExtraData)
			}
			t.ExtraDropped++
			t.Notes = append(t.Notes, fmt.Sprintf("Discarding too much extra metadata in snapshot table entry %d (%d > %d)",
				i, e.ExtraDataSize, maxSnapshotExtraData))
			truncate = true
		}
		known := min(uint64(e.ExtraDataSize), snapshotExtraLen)
		clear(extra[:])
		if err := r.read(extra[:known], pos); err != nil {
			return nil, fmt.Errorf("failed to read snapshot table: %w", err)
		}
		pos += known
		if e.ExtraDataSize >= 8 {
			e.VMStateSize = be.Uint64(extra[0:])
		}
		if e.ExtraDataSize >= 16 {
			e.DiskSize = be.Uint64(extra[8:])
		}
		if e.ExtraDataSize >= 24 {
			e.ICount = be.Uint64(extra[16:])
		}
		if e.ExtraDataSize > snapshotExtraLen {
			end := pos + uint64(e.ExtraDataSize) - snapshotExtraLen
			if truncate {
				e.ExtraDataSize = maxSnapshotExtraData
			}
			e.UnknownExtra = make([]byte, e.ExtraDataSize-snapshotExtraLen)
			if err := r.read(e.UnknownExtra, pos); err != nil {
				return nil, fmt.Errorf("failed to read snapshot table: %w", err)
			}
			pos = end
		}
		if err := r.read(text[:idLen], pos); err != nil {
			return nil, fmt.Errorf("failed to read snapshot table: %w", err)
		}
		e.ID = string(text[:idLen])
		pos += idLen
		if err := r.read(text[:nameLen], pos); err != nil {
			return nil, fmt.Errorf("failed to read snapshot table: %w", err)
		}
		e.Name = string(text[:nameLen])
		pos += nameLen

		tableLen += snapshotHeaderLen + uint64(e.ExtraDataSize) + idLen + nameLen
		if tableLen > maxSnapshotTableBytes || pos-off > math.MaxInt32 {
			if !repair {
				return nil, fmt.Errorf("%w: snapshot table is too big (more than %d bytes)", ErrInvalid, maxSnapshotTableBytes)
			}
			t.Discarded += int(n - i)
			t.Notes = append(t.Notes, fmt.Sprintf("Discarding %d overhanging snapshots (snapshot table is too big)", n-i))
			pos = preEntry
			break
		}
		if err := visit(int(i), &e); err != nil {
			return nil, err
		}
	}
	t.Size = int64(pos - off)
	return t, nil
}

// readSnapshotTable parses the snapshot table named by h strictly, for
// opening an image: besides the bounds of loadSnapshotTable, every
// snapshot's L1 table must be cluster aligned, at most maxL1Bytes long and
// inside the file, and the table itself inside the file. Errors wrap
// ErrInvalid.
func readSnapshotTable(f File, h *Header) (*snapshotTable, error) {
	c := entryCollector{n: h.NbSnapshots}
	t, err := scanSnapshotTableStrict(f, h, c.keep)
	if err != nil {
		return nil, err
	}
	t.Entries = c.entries
	return t, nil
}

// scanSnapshotTableStrict is readSnapshotTable handing each validated
// entry to visit instead of keeping it (scanSnapshotTable).
func scanSnapshotTableStrict(f File, h *Header, visit func(i int, e *snapshotEntry) error) (*snapshotTable, error) {
	cs := h.clusterSize()
	if h.NbSnapshots > maxSnapshots {
		return nil, fmt.Errorf("%w: %d snapshots (at most %d)", ErrInvalid, h.NbSnapshots, maxSnapshots)
	}
	if h.NbSnapshots == 0 {
		return &snapshotTable{Offset: h.SnapshotsOffset}, nil
	}
	fsize, err := f.Size()
	if err != nil {
		return nil, err
	}
	if h.SnapshotsOffset == 0 || h.SnapshotsOffset >= uint64(fsize) {
		return nil, fmt.Errorf("%w: snapshot table offset %#x outside the file", ErrInvalid, h.SnapshotsOffset)
	}
	t, err := scanSnapshotTable(f, h.SnapshotsOffset, h.NbSnapshots, cs, h.Size&^511, false, func(i int, e *snapshotEntry) error {
		if err := e.validate(cs, fsize); err != nil {
			return fmt.Errorf("snapshot %d (id %q): %w", i, e.ID, err)
		}
		return visit(i, e)
	})
	if err != nil {
		return nil, err
	}
	if t.Offset+uint64(t.Size) > uint64(fsize) {
		return nil, fmt.Errorf("%w: snapshot table (%d bytes at %#x) extends past the end of the file", ErrInvalid, t.Size, t.Offset)
	}
	return t, nil
}

// validate checks the entry's L1 table bounds.
func (e *snapshotEntry) validate(clusterSize, fileSize int64) error {
	if e.L1Size > maxSnapshotL1Entries {
		return fmt.Errorf("%w: L1 table of %d entries is too large", ErrInvalid, e.L1Size)
	}
	if e.L1Offset&uint64(clusterSize-1) != 0 {
		return fmt.Errorf("%w: L1 table offset %#x is not cluster aligned", ErrInvalid, e.L1Offset)
	}
	if e.L1Size == 0 {
		return nil
	}
	if e.L1Offset == 0 || e.L1Offset > uint64(fileSize) || uint64(e.L1Size)*8 > uint64(fileSize)-e.L1Offset {
		return fmt.Errorf("%w: L1 table (%d entries at %#x) outside the file", ErrInvalid, e.L1Size, e.L1Offset)
	}
	return nil
}

// encodedLen is the number of bytes the entry takes when encoded.
func (e *snapshotEntry) encodedLen() uint64 {
	return snapshotHeaderLen + uint64(max(snapshotExtraLen, e.ExtraDataSize)) + uint64(len(e.ID)) + uint64(len(e.Name))
}

// encodeSnapshotTable serialises entries as QEMU 7.2 writes them: every
// entry gets at least the 24 bytes of known extra data (which repairs
// incomplete entries), unknown extra data is kept, entries are 8-byte
// aligned. The result is the table's exact length (not padded to a
// cluster).
func encodeSnapshotTable(entries []snapshotEntry) ([]byte, error) {
	if len(entries) > maxSnapshots {
		return nil, fmt.Errorf("%w: %d snapshots (at most %d)", ErrInvalid, len(entries), maxSnapshots)
	}
	var size uint64
	for i := range entries {
		e := &entries[i]
		if len(e.ID) > math.MaxUint16 || len(e.Name) > math.MaxUint16 {
			return nil, fmt.Errorf("%w: snapshot id or name longer than %d bytes", ErrInvalid, math.MaxUint16)
		}
		if e.ExtraDataSize > maxSnapshotExtraData ||
			(e.ExtraDataSize > snapshotExtraLen && uint64(len(e.UnknownExtra)) != uint64(e.ExtraDataSize)-snapshotExtraLen) {
			return nil, fmt.Errorf("%w: snapshot %q: inconsistent extra data", ErrInvalid, e.ID)
		}
		size = (size+7)&^7 + e.encodedLen()
		if size > maxSnapshotTableBytes {
			return nil, fmt.Errorf("%w: snapshot table larger than %d bytes", ErrInvalid, maxSnapshotTableBytes)
		}
	}
	buf := make([]byte, size)
	be := binary.BigEndian
	var pos uint64
	for i := range entries {
		e := &entries[i]
		pos = (pos + 7) &^ 7
		h := buf[pos:]
		be.PutUint64(h[0:], e.L1Offset)
		be.PutUint32(h[8:], e.L1Size)
		be.PutUint16(h[12:], uint16(len(e.ID)))
		be.PutUint16(h[14:], uint16(len(e.Name)))
		be.PutUint32(h[16:], e.DateSec)
		be.PutUint32(h[20:], e.DateNsec)
		be.PutUint64(h[24:], e.VMClockNsec)
		if e.VMStateSize <= math.MaxUint32 {
			be.PutUint32(h[32:], uint32(e.VMStateSize))
		}
		extraLen := max(snapshotExtraLen, e.ExtraDataSize)
		be.PutUint32(h[36:], extraLen)
		pos += snapshotHeaderLen
		be.PutUint64(buf[pos:], e.VMStateSize)
		be.PutUint64(buf[pos+8:], e.DiskSize)
		be.PutUint64(buf[pos+16:], e.ICount)
		pos += snapshotExtraLen
		if extraLen > snapshotExtraLen {
			pos += uint64(copy(buf[pos:], e.UnknownExtra))
		}
		pos += uint64(copy(buf[pos:], e.ID))
		pos += uint64(copy(buf[pos:], e.Name))
	}
	return buf, nil
}

// entryCollector keeps the entries a scan hands it (n of them at most:
// the scan has checked n against maxSnapshots when it calls keep).
type entryCollector struct {
	n       uint32
	entries []snapshotEntry
}

func (c *entryCollector) keep(_ int, e *snapshotEntry) error {
	if c.entries == nil {
		c.entries = make([]snapshotEntry, 0, c.n)
	}
	c.entries = append(c.entries, *e)
	return nil
}
