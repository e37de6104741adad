package fuseloop

import (
	"context"
	"errors"
	"io"
	"syscall"

	"github.com/csi-qcow2/csi-qcow2/pkg/nbdattach"
	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// file is the one file of the mount: its bytes are the backend's.
// Every method may run on many goroutines at once; the backend is safe
// for that and the file keeps no state of its own.
type file struct {
	fs.Inode
	b nbdattach.Backend
}

var (
	_ fs.NodeOpener    = (*file)(nil)
	_ fs.NodeGetattrer = (*file)(nil)
	_ fs.NodeSetattrer = (*file)(nil)
	_ fs.NodeReader    = (*file)(nil)
	_ fs.NodeWriter    = (*file)(nil)
	_ fs.NodeFsyncer   = (*file)(nil)
	_ fs.NodeFlusher   = (*file)(nil)
	_ fs.NodeAllocater = (*file)(nil)
)

// Open asks for direct I/O so that the kernel keeps no page cache of the
// file (the loop device above already has the block layer's), and allows
// parallel direct writes, which the kernel otherwise serializes on the
// inode lock.
func (f *file) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY && f.b.Caps().ReadOnly {
		return nil, 0, syscall.EROFS
	}
	return nil, fuse.FOPEN_DIRECT_IO | fuse.FOPEN_PARALLEL_DIRECT_WRITES, 0
}

func (f *file) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	f.fill(&out.Attr)
	return 0
}

func (f *file) fill(a *fuse.Attr) {
	a.Mode = syscall.S_IFREG | 0o600
	if f.b.Caps().ReadOnly {
		a.Mode = syscall.S_IFREG | 0o400
	}
	a.Nlink = 1
	a.Size = uint64(f.b.Size())
	a.Blocks = (a.Size + 511) / 512
	a.Blksize = 4096
}

// Setattr refuses size changes: the size is the backend's, and grows only
// through Attachment.Resize. Times and modes are accepted and ignored, so
// that tools which touch them do not fail.
func (f *file) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if sz, ok := in.GetSize(); ok && int64(sz) != f.b.Size() {
		return syscall.EPERM
	}
	f.fill(&out.Attr)
	return 0
}

func (f *file) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	size := f.b.Size()
	if off < 0 {
		return nil, syscall.EINVAL
	}
	if off >= size {
		return fuse.ReadResultData(nil), 0
	}
	dest = dest[:min(int64(len(dest)), size-off)]
	n, err := f.b.ReadAt(dest, off)
	// io.ReaderAt may report EOF with a full read; a short read is an
	// error, since the range is inside the backend.
	if err != nil && !(errors.Is(err, io.EOF) && n == len(dest)) {
		return nil, errnoOf(err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

// Write stores data at off or fails: a write past the end is ENOSPC
// (the device is full there), never a silent short success.
func (f *file) Write(ctx context.Context, fh fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	if off < 0 {
		return 0, syscall.EINVAL
	}
	if off+int64(len(data)) > f.b.Size() {
		return 0, syscall.ENOSPC
	}
	n, err := f.b.WriteAt(data, off)
	if err != nil {
		return 0, errnoOf(err)
	}
	if n != len(data) {
		return 0, syscall.EIO
	}
	return uint32(n), 0
}

// Fsync is where a flush of the loop device arrives (vfs_fsync of the
// backing file); fsync and fdatasync are the same for the backend.
func (f *file) Fsync(ctx context.Context, fh fs.FileHandle, flags uint32) syscall.Errno {
	return errnoOf(f.b.Flush())
}

// Flush runs on every close(2) of a descriptor of the file. Writes went
// straight to the backend (direct I/O), so there is nothing to push, and
// making every close a durability barrier would cost a backend Flush per
// open/close of the device by any tool. Durability is fsync's job.
func (f *file) Flush(ctx context.Context, fh fs.FileHandle) syscall.Errno {
	return 0
}

// Allocate serves the two fallocate modes the loop driver uses. Both
// promise zeros afterwards (see the package doc for why PUNCH_HOLE is not
// Trim). Allocating modes are refused: the backend thin-provisions, and
// claiming space was reserved when it was not would be a lie.
func (f *file) Allocate(ctx context.Context, fh fs.FileHandle, off, n uint64, mode uint32) syscall.Errno {
	if !f.b.Caps().WriteZeroes {
		return syscall.EOPNOTSUPP
	}
	size := uint64(f.b.Size())
	if off > size || n > size-off {
		return syscall.EINVAL
	}
	if n == 0 {
		return 0
	}
	switch mode {
	case unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE:
		return errnoOf(f.b.WriteZeroes(int64(off), int64(n), 0))
	case unix.FALLOC_FL_ZERO_RANGE, unix.FALLOC_FL_ZERO_RANGE | unix.FALLOC_FL_KEEP_SIZE:
		return errnoOf(f.b.WriteZeroes(int64(off), int64(n), nbdattach.ZeroNoHole))
	}
	return syscall.EOPNOTSUPP
}
