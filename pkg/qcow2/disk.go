package qcow2

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
)

// Disk is what a backing file, a convert source or destination offers:
// a qcow2 Image or a Raw file.
type Disk interface {
	io.ReaderAt
	io.WriterAt
	Size() int64
	Map(off, n int64) ([]Extent, error)
	Flush() error
	Close() error
	Info() Info
}

var (
	_ Disk = (*Image)(nil)
	_ Disk = (*Raw)(nil)
)

// Probe returns "qcow2" when the file starts with the qcow2 magic, "raw"
// otherwise.
func Probe(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	return probeFile(f)
}

func probeFile(r io.ReaderAt) (string, error) {
	var b [4]byte
	if err := readFull(r, b[:], 0); err != nil {
		return "", err
	}
	if binary.BigEndian.Uint32(b[:]) == qcowMagic {
		return "qcow2", nil
	}
	return "raw", nil
}

// OpenDisk opens a disk image as qcow2 or raw; format "" probes it.
func OpenDisk(path, format string, opts Options) (Disk, error) {
	if format == "" {
		var err error
		if format, err = Probe(path); err != nil {
			return nil, err
		}
	}
	switch format {
	case "qcow2":
		return Open(path, opts)
	case "raw":
		return openRaw(path, opts)
	}
	return nil, fmt.Errorf("%w: image format %q (qcow2 and raw are supported)", ErrUnsupported, format)
}

// diskIsZero reports from metadata whether d reads [off, off+n) as zeros;
// a nil d and ranges past its end read as zeros.
func diskIsZero(d Disk, off, n int64) (bool, error) {
	if d == nil || off >= d.Size() {
		return true, nil
	}
	ext, err := d.Map(off, min(n, d.Size()-off))
	if err != nil {
		return false, err
	}
	for _, e := range ext {
		if !e.Zero || e.Data {
			return false, nil
		}
	}
	return true, nil
}

// readDisk reads [off, off+len(p)) of d; a nil d and bytes past its end
// read as zeros.
func readDisk(d Disk, p []byte, off int64) error {
	if d == nil || off >= d.Size() {
		clear(p)
		return nil
	}
	if end := d.Size(); off+int64(len(p)) > end {
		clear(p[end-off:])
		p = p[:end-off]
	}
	_, err := d.ReadAt(p, off)
	return err
}
