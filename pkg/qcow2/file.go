package qcow2

import (
	"errors"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// File is the storage under an image. Every byte the engine stores goes
// through it, so a test can wrap it to record the write/flush stream.
type File interface {
	io.ReaderAt
	io.WriterAt
	// Sync makes every completed WriteAt, Truncate and PunchHole durable.
	Sync() error
	// Size returns the current length of the file.
	Size() (int64, error)
	Truncate(size int64) error
	// PunchHole deallocates [off, off+n) so that it reads as zeros.
	// Implementations that cannot deallocate must write zeros instead.
	PunchHole(off, n int64) error
	Close() error
}

// durableWriter is implemented by Files that can make one write durable
// without flushing anything else (pwritev2 with RWF_DSYNC): by the time it
// returns, the bytes and the file size needed to read them are on disk.
type durableWriter interface {
	WriteAtDurable(p []byte, off int64) error
}

// writeDurable makes one write durable, with RWF_DSYNC where the File can,
// else with a write and a full sync.
func writeDurable(f File, p []byte, off int64) error {
	if d, ok := f.(durableWriter); ok {
		return d.WriteAtDurable(p, off)
	}
	if _, err := f.WriteAt(p, off); err != nil {
		return err
	}
	return f.Sync()
}

// osFile is File over an *os.File.
type osFile struct {
	f        *os.File
	canPunch bool
	noDsync  bool     // RWF_DSYNC refused: fall back to fdatasync
	lock     lockMode // the image lock bytes it holds and Close releases (lock.go)
	whole    bool     // it holds a write lock on the whole file (a journal's)
}

// NewOSFile wraps f; the returned File takes ownership of f.
func NewOSFile(f *os.File) File { return &osFile{f: f, canPunch: true} }

func (o *osFile) ReadAt(p []byte, off int64) (int, error)  { return o.f.ReadAt(p, off) }
func (o *osFile) WriteAt(p []byte, off int64) (int, error) { return o.f.WriteAt(p, off) }
func (o *osFile) Sync() error                              { return unix.Fdatasync(int(o.f.Fd())) }
func (o *osFile) Truncate(size int64) error                { return o.f.Truncate(size) }

// Close releases the file's locks and closes it.
func (o *osFile) Close() error {
	o.releaseLocks()
	return o.f.Close()
}

func (o *osFile) Size() (int64, error) {
	st, err := o.f.Stat()
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

// WriteAtDurable writes with RWF_DSYNC (O_DSYNC for this write only);
// kernels or filesystems without it get a write and an fdatasync.
func (o *osFile) WriteAtDurable(p []byte, off int64) error {
	if !o.noDsync {
		n, err := unix.Pwritev2(int(o.f.Fd()), [][]byte{p}, off, unix.RWF_DSYNC)
		if err == nil && n == len(p) {
			return nil
		}
		if err == nil || (!errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EINVAL)) {
			if err == nil {
				err = io.ErrShortWrite
			}
			return err
		}
		o.noDsync = true
	}
	if _, err := o.f.WriteAt(p, off); err != nil {
		return err
	}
	return o.Sync()
}

func (o *osFile) PunchHole(off, n int64) error {
	if n <= 0 {
		return nil
	}
	if o.canPunch {
		err := unix.Fallocate(int(o.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOSYS) {
			return err
		}
		o.canPunch = false
	}
	return writeZeros(o, off, n)
}

// writeZeros writes n zero bytes at off in bounded chunks.
func writeZeros(w io.WriterAt, off, n int64) error {
	const chunk = 1 << 20
	buf := make([]byte, min(n, chunk))
	for n > 0 {
		l := min(n, int64(len(buf)))
		if _, err := w.WriteAt(buf[:l], off); err != nil {
			return err
		}
		off += l
		n -= l
	}
	return nil
}

// readFull reads exactly len(p) bytes at off; bytes past the end of the
// file read as zeros, as they do for QEMU.
func readFull(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	return fullRead(p, n, err)
}

// fullRead finishes a ReadAt into p that returned n, err as readFull does.
// Callers holding a File call its ReadAt directly and then this: passing
// a File as an io.ReaderAt costs an interface conversion per call.
func fullRead(p []byte, n int, err error) error {
	if err == io.EOF || (err == nil && n == len(p)) {
		clear(p[n:])
		return nil
	}
	return err
}
