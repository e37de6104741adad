package testtools

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// Fill takes all the free space of the storage under the filesystem, as
// a thin pool that ran out of space. The filesystem does not notice: its
// writes still succeed (into the page cache), and overwrites of blocks
// written before keep working, but the writeback of any block the storage
// never held fails with ENOSPC. The kernel then marks those pages clean,
// records the error for the file, and reports it to the next fdatasync of
// each descriptor; the data is lost once the pages are evicted. What the
// test wrote before Fill but has not synced may be lost the same way.
func (fs *ThinFS) Fill() {
	fs.t.Helper()
	fs.fill(filepath.Join(fs.storage, "filler"))
}

// FillFilesystem takes all the free blocks of the filesystem itself: a
// write that needs a new block now fails with ENOSPC at once (the
// storage keeps its space, nothing is lost), while overwrites of
// allocated blocks succeed. It allocates without writing (fallocate),
// so the storage spends next to nothing on it.
func (fs *ThinFS) FillFilesystem() {
	fs.t.Helper()
	fs.fill(filepath.Join(fs.mnt, "filler"))
}

// Free removes what Fill and FillFilesystem took: from its return on,
// writes and writebacks find space again.
func (fs *ThinFS) Free() {
	fs.t.Helper()
	for _, mount := range []string{fs.storage, fs.mnt} {
		if err := os.Remove(filepath.Join(mount, "filler")); err != nil && !errors.Is(err, os.ErrNotExist) {
			fs.t.Fatal(err)
		}
	}
	for _, mount := range []string{fs.storage, fs.mnt} {
		WaitFor(fs.t, "free space on "+mount, func() bool { return freeBytes(fs.t, mount) > 0 })
	}
}

// fill extends the file at path with allocated blocks until its
// filesystem has no block left to allocate: a fallocate of a single
// block fails with ENOSPC. It asks for the free space statfs reports,
// halving on ENOSPC (block maps need blocks too, and other writers
// may take some meanwhile).
func (fs *ThinFS) fill(path string) {
	t := fs.t
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &sfs); err != nil {
		t.Fatal(err)
	}
	block := sfs.Bsize
	off := st.Size()
	chunk := max(int64(sfs.Bavail)*block, block)
	for {
		err := unix.Fallocate(int(f.Fd()), 0, off, chunk)
		switch {
		case err == nil:
			off += chunk
		case !errors.Is(err, unix.ENOSPC):
			t.Fatalf("filling %s: fallocate: %v", path, err)
		case chunk == block:
			return
		default:
			chunk = max(chunk/2/block*block, block)
		}
	}
}

// freeBytes returns the space statfs says an unprivileged writer may
// still allocate on the filesystem holding path.
func freeBytes(t testing.TB, path string) int64 {
	var sfs unix.Statfs_t
	if err := unix.Statfs(path, &sfs); err != nil {
		t.Fatal(err)
	}
	return int64(sfs.Bavail) * sfs.Bsize
}
