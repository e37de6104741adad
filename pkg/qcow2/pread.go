package qcow2

import (
	"fmt"
	"io"
	"syscall"
)

// fdReader is implemented by Files whose ReadAt is a pread(2) of one host
// file descriptor that stays open until their Close. The engine then reads
// guest data with pread on that descriptor itself: going through the
// File's ReadAt (an interface call, then os.File's ReadAt with poll.FD's
// reference counting) made a 4 KiB page-cache read of about 1.3 µs some
// 100 ns slower (docs/benchmarks.md). Wrappers that must see every read
// (the crash recorder, counters) do not implement it, or answer ok false.
type fdReader interface {
	ReadFD() (fd int, ok bool)
}

// ReadFD returns the descriptor of the file.
func (o *osFile) ReadFD() (int, bool) { return int(o.f.Fd()), true }

// readFD returns the descriptor the image reads guest data from, or -1
// when reads go through f.ReadAt.
func readFD(f File) int {
	if r, ok := f.(fdReader); ok {
		if fd, ok := r.ReadFD(); ok && fd >= 0 {
			return fd
		}
	}
	return -1
}

// readHost reads len(p) bytes of guest data stored at host offset off;
// bytes past the end of the file read as zeros (readFull). It preads with
// package syscall, not x/sys/unix, whose Pread adds an assembly trampoline
// and two ABI wrappers (about 30 instructions a call, callgrind).
//
// Callers hold mu. The descriptor img.fd belongs to img.f, which only
// Close closes, after it has set closed under the exclusive lock; every
// pread of it (here, and ReadAt's own after dataHost) first sees closed
// false under mu, so none can reach a descriptor number that has been
// closed and reused for another file (TestReadAfterCloseNeverReadsReusedFD,
// TestSnapshotViewReadAfterCloseNeverReadsReusedFD).
func (img *Image) readHost(p []byte, off int64) error {
	if img.closed {
		return ErrClosed
	}
	if img.fd < 0 {
		n, err := img.f.ReadAt(p, off)
		return fullRead(p, n, err)
	}
	for len(p) > 0 {
		n, err := syscall.Pread(img.fd, p, off)
		switch {
		case err == syscall.EINTR:
			continue
		case err != nil:
			return img.preadError(off, err)
		case n == 0:
			clear(p)
			return nil
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// preadError is readHost's error, apart so that readHost stays small.
func (img *Image) preadError(off int64, err error) error {
	return fmt.Errorf("read %s at %#x: %w", img.name, off, err)
}

// fdWriter is implemented by Files whose WriteAt is a pwrite(2) of the
// descriptor they offer, open for writing until their Close: in-place
// guest writes then pwrite it directly (writeHost), as reads do.
type fdWriter interface {
	WriteFD() (fd int, ok bool)
}

// WriteFD returns the descriptor of the file.
func (o *osFile) WriteFD() (int, bool) { return int(o.f.Fd()), true }

// writeFD returns the descriptor in-place guest writes go to, or -1 when
// they go through f.WriteAt (read-only images never write).
func writeFD(f File, readOnly bool) int {
	if w, ok := f.(fdWriter); ok && !readOnly {
		if fd, ok := w.WriteFD(); ok && fd >= 0 {
			return fd
		}
	}
	return -1
}

// writeHost writes p, guest data, at host offset off. Callers hold mu, and
// closed is false (dataWord checked it), so img.wfd is still img.f's.
func (img *Image) writeHost(p []byte, off int64) error {
	if img.wfd < 0 {
		_, err := img.f.WriteAt(p, off)
		return err
	}
	for len(p) > 0 {
		n, err := syscall.Pwrite(img.wfd, p, off)
		switch {
		case err == syscall.EINTR:
			continue
		case err != nil:
			return fmt.Errorf("write %s at %#x: %w", img.name, off, err)
		case n == 0:
			return fmt.Errorf("write %s at %#x: %w", img.name, off, io.ErrShortWrite)
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}
