package nbdattach

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// FileBackend serves a raw file (or block device) as an export: pread and
// pwrite at the same offsets, fdatasync for Flush, hole punching for Trim
// and zeroing, SEEK_DATA/SEEK_HOLE for block status.
type FileBackend struct {
	f *os.File
	// fd is f's descriptor for preadv2, which package os does not make.
	// It is used only under fdMu's read lock with closed false: after
	// Close the number may name a file opened since.
	fdMu     sync.RWMutex
	fd       int
	closed   bool
	size     atomic.Int64 // Resize changes it while requests run
	readOnly bool
}

// OpenFileBackend opens path as a raw export.
func OpenFileBackend(path string, readOnly bool) (*FileBackend, error) {
	flag := os.O_RDWR
	if readOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, err
	}
	size, err := f.Seek(0, 2)
	if err != nil {
		f.Close()
		return nil, err
	}
	b := &FileBackend{f: f, fd: int(f.Fd()), readOnly: readOnly}
	b.size.Store(size)
	return b, nil
}

// Close closes the file. A ReadAtNoWait running meanwhile ends first,
// and later ones fail with os.ErrClosed, as ReadAt does.
func (b *FileBackend) Close() error {
	b.fdMu.Lock()
	b.closed = true
	b.fdMu.Unlock()
	return b.f.Close()
}

func (b *FileBackend) Size() int64 { return b.size.Load() }

// Resize grows the file to size bytes (the new range reads as zeros) and
// syncs it, so that the new size survives a crash. Only a regular file
// can grow; a smaller size is refused (ErrShrink).
func (b *FileBackend) Resize(size int64) error {
	if b.readOnly {
		return ErrReadOnly
	}
	if cur := b.size.Load(); size < cur {
		return fmt.Errorf("%w: %d bytes, asked for %d", ErrShrink, cur, size)
	}
	if err := b.f.Truncate(size); err != nil {
		return err
	}
	if err := b.f.Sync(); err != nil {
		return err
	}
	b.size.Store(size)
	return nil
}

func (b *FileBackend) Caps() Caps {
	return Caps{ReadOnly: b.readOnly, MultiConn: true, FUA: true, Trim: true,
		WriteZeroes: true, FastZero: true, BlockStatus: true}
}

func (b *FileBackend) ReadAt(p []byte, off int64) (int, error) { return b.f.ReadAt(p, off) }

// ReadAtNoWait reads with preadv2(RWF_NOWAIT): only what the page cache
// holds (NoWaitReader).
func (b *FileBackend) ReadAtNoWait(p []byte, off int64) (int, error) {
	b.fdMu.RLock()
	if b.closed {
		b.fdMu.RUnlock()
		return 0, fmt.Errorf("read %s: %w", b.f.Name(), os.ErrClosed)
	}
	n, err := unix.Preadv2(b.fd, [][]byte{p}, off, unix.RWF_NOWAIT)
	b.fdMu.RUnlock()
	switch {
	case err == nil:
		return n, nil
	case errors.Is(err, unix.EAGAIN):
		return n, ErrWouldBlock
	case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOSYS):
		return 0, ErrNoWaitUnsupported
	}
	return 0, err
}

func (b *FileBackend) WriteAt(p []byte, off int64) (int, error) {
	if b.readOnly {
		return 0, ErrReadOnly
	}
	return b.f.WriteAt(p, off)
}

// Flush makes every write durable: fdatasync covers writes made through
// any connection, since they all go to this one file.
func (b *FileBackend) Flush() error {
	if b.readOnly {
		return nil
	}
	return unix.Fdatasync(int(b.f.Fd()))
}

// Trim punches a hole; a filesystem that cannot is fine (trim is a hint).
func (b *FileBackend) Trim(off, n int64) error {
	err := b.fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	if errors.Is(err, unix.EOPNOTSUPP) {
		return nil
	}
	return err
}

// WriteZeroes punches a hole, or with ZeroNoHole zeroes in place
// (FALLOC_FL_ZERO_RANGE); without filesystem support it writes zero bytes
// unless ZeroFast forbids that.
func (b *FileBackend) WriteZeroes(off, n int64, flags ZeroFlags) error {
	mode := uint32(unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE)
	if flags&ZeroNoHole != 0 {
		mode = unix.FALLOC_FL_ZERO_RANGE | unix.FALLOC_FL_KEEP_SIZE
	}
	err := b.fallocate(mode, off, n)
	if !errors.Is(err, unix.EOPNOTSUPP) {
		return err
	}
	if flags&ZeroFast != 0 {
		return ErrNotFast
	}
	zero := make([]byte, min(n, 1<<20))
	for n > 0 {
		k := min(n, int64(len(zero)))
		if _, err := b.WriteAt(zero[:k], off); err != nil {
			return err
		}
		off, n = off+k, n-k
	}
	return nil
}

func (b *FileBackend) fallocate(mode uint32, off, n int64) error {
	if b.readOnly {
		return ErrReadOnly
	}
	if err := unix.Fallocate(int(b.f.Fd()), mode, off, n); err != nil {
		return fmt.Errorf("fallocate: %w", err)
	}
	return nil
}

// BlockStatus reports holes (HOLE|ZERO) and data with SEEK_DATA/SEEK_HOLE;
// without them everything is data.
func (b *FileBackend) BlockStatus(off, n int64) ([]Extent, error) {
	var out []Extent
	fd := int(b.f.Fd())
	end := off + n
	for pos := off; pos < end; {
		data, err := unix.Seek(fd, pos, unix.SEEK_DATA)
		switch {
		case errors.Is(err, unix.ENXIO):
			data = end
		case err != nil:
			return append(out, Extent{Length: end - pos}), nil
		}
		data = min(data, end)
		if data > pos {
			out = append(out, Extent{Length: data - pos, Hole: true, Zero: true})
			pos = data
			continue
		}
		hole, err := unix.Seek(fd, pos, unix.SEEK_HOLE)
		if err != nil {
			hole = end
		}
		hole = min(max(hole, pos+1), end)
		out = append(out, Extent{Length: hole - pos})
		pos = hole
	}
	return out, nil
}
