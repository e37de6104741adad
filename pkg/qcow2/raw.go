package qcow2

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Raw is a raw disk image: guest offset = file offset.
type Raw struct {
	name     string
	f        *osFile // holds the image lock until Close (lock.go)
	size     int64
	readOnly bool
}

// OpenRaw opens a raw image file, locked as a writer or (readOnly) as a
// reader, like Open.
func OpenRaw(path string, readOnly bool) (*Raw, error) {
	return openRaw(path, Options{ReadOnly: readOnly})
}

// openRaw opens a raw image file under the lock options of opts
// (ReadOnly, ForceShare, NoLock).
func openRaw(path string, opts Options) (*Raw, error) {
	if err := checkLockOptions(opts); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	flag := os.O_RDWR
	if opts.ReadOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, err
	}
	// A raw file takes the same lock as a qcow2 one: QEMU's raw writers
	// take less (they may share writing), so this is the stricter side.
	of := &osFile{f: f}
	if err := of.setLock(lockModeFor(opts)); err != nil {
		of.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return newRaw(path, of, opts.ReadOnly)
}

// newRaw makes a Raw of f, which it owns from then on (it closes it on
// error); f's locks stay until Close.
func newRaw(name string, f *osFile, readOnly bool) (*Raw, error) {
	st, err := f.f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &Raw{name: name, f: f, size: st.Size(), readOnly: readOnly}, nil
}

// Size returns the size of the file when it was opened.
func (r *Raw) Size() int64 { return r.size }

// ReadAt reads at off; bytes past the end of the file read as zeros.
func (r *Raw) ReadAt(p []byte, off int64) (int, error) {
	if err := readFull(r.f, p, off); err != nil {
		return 0, err
	}
	return len(p), nil
}

// WriteAt writes at off.
func (r *Raw) WriteAt(p []byte, off int64) (int, error) {
	if r.readOnly {
		return 0, ErrReadOnly
	}
	return r.f.WriteAt(p, off)
}

// Flush makes written data durable.
func (r *Raw) Flush() error {
	if r.readOnly {
		return nil
	}
	return r.f.Sync()
}

// Close releases the file's lock and closes it.
func (r *Raw) Close() error { return r.f.Close() }

// Info describes the file.
func (r *Raw) Info() Info {
	return Info{Filename: r.name, Format: "raw", VirtualSize: r.size, ActualSize: allocatedBytes(r.name)}
}

// Map reports data and holes of [off, off+n) with SEEK_DATA/SEEK_HOLE.
func (r *Raw) Map(off, n int64) ([]Extent, error) {
	var out []Extent
	end := min(off+n, r.size)
	fd := int(r.f.f.Fd())
	for pos := off; pos < end; {
		data, err := unix.Seek(fd, pos, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			data = end
		} else if err != nil {
			// No SEEK_DATA support: report everything as data.
			return appendExtent(out, Extent{Start: pos, Length: end - pos, Data: true, Present: true, Offset: pos, File: r.name}), nil
		}
		data = min(data, end)
		if data > pos {
			out = appendExtent(out, Extent{Start: pos, Length: data - pos, Zero: true, Present: true, Offset: pos, File: r.name})
			pos = data
			if pos >= end {
				break
			}
		}
		hole, err := unix.Seek(fd, pos, unix.SEEK_HOLE)
		if err != nil {
			hole = end
		}
		hole = min(hole, end)
		out = appendExtent(out, Extent{Start: pos, Length: hole - pos, Data: true, Present: true, Offset: pos, File: r.name})
		pos = hole
	}
	if off+n > end && end >= off {
		out = appendExtent(out, Extent{Start: max(end, off), Length: off + n - max(end, off), Zero: true, Offset: -1})
	}
	return out, nil
}

// allocatedBytes is the space a file occupies on its filesystem.
func allocatedBytes(path string) int64 {
	var st unix.Stat_t
	if unix.Stat(path, &st) != nil {
		return 0
	}
	return st.Blocks * 512
}
