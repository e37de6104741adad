package testtools

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestThinFSFill: after Fill, a write of new blocks is taken, its
// writeback fails with ENOSPC (not EIO: the engine's tests tell a lost
// writeback from other failures by it), and it is lost once evicted;
// what was synced before stays, and overwriting it still syncs. After
// Free new writes sync again.
func TestThinFSFill(t *testing.T) {
	fs := MountThinFS(t, 64<<20)
	path := filepath.Join(fs.Dir, "f")
	f := createFile(t, path)
	old := bytes.Repeat([]byte{'A'}, 64<<10)
	writeSync(t, f, old, 0)

	fs.Fill()
	lost := bytes.Repeat([]byte{'B'}, 1<<20)
	if _, err := f.WriteAt(lost, 1<<20); err != nil {
		t.Fatalf("a write after Fill: %v (the filesystem should still take it)", err)
	}
	if err := WriteBack(t, path); !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("writeback of new blocks after Fill: %v, want ENOSPC", err)
	}
	if err := unix.Fdatasync(int(f.Fd())); !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("fdatasync of another descriptor after the failed writeback: %v, want ENOSPC", err)
	}
	DropCache(t, path)
	requireRead(t, f, old, 0)
	if got := readAt(t, f, len(lost), 1<<20); bytes.Equal(got, lost) {
		t.Fatal("a write whose writeback failed still reads back after eviction")
	}
	writeSync(t, f, bytes.Repeat([]byte{'C'}, 4096), 0) // storage it has

	fs.Free()
	again := bytes.Repeat([]byte{'D'}, 1<<20)
	writeSync(t, f, again, 1<<20)
	DropCache(t, path)
	requireRead(t, f, again, 1<<20)
	closeFile(t, f)
}

// TestThinFSFillFilesystem: after FillFilesystem a write that needs a new
// block fails with ENOSPC at once, overwrites of allocated blocks go on
// and sync; after Free the new write succeeds and syncs.
func TestThinFSFillFilesystem(t *testing.T) {
	fs := MountThinFS(t, 64<<20)
	path := filepath.Join(fs.Dir, "f")
	f := createFile(t, path)
	writeSync(t, f, bytes.Repeat([]byte{'A'}, 64<<10), 0)

	fs.FillFilesystem()
	grow := bytes.Repeat([]byte{'B'}, 64<<10)
	if _, err := f.WriteAt(grow, 1<<20); !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("a write of a new block on a full filesystem: %v, want ENOSPC", err)
	}
	over := bytes.Repeat([]byte{'C'}, 64<<10)
	writeSync(t, f, over, 0)

	fs.Free()
	writeSync(t, f, grow, 1<<20)
	DropCache(t, path)
	requireRead(t, f, over, 0)
	requireRead(t, f, grow, 1<<20)
	closeFile(t, f)
}

// TestThinFSCleanup: a test that ends early (here a skip; a failure ends
// the same way) leaves no mount, no bound loop device and no directory.
func TestThinFSCleanup(t *testing.T) {
	var fs *ThinFS
	t.Run("mount", func(t *testing.T) {
		fs = MountThinFS(t, 16<<20)
		if got := loopBacking(fs.dev); got != fs.disk {
			t.Fatalf("%s is bound to %q, want %q (the cleanup waits on this)", fs.dev, got, fs.disk)
		}
		fs.Fill()
		f := createFile(t, filepath.Join(fs.Dir, "f"))
		closeFile(t, f)
		t.SkipNow()
	})
	if fs == nil {
		t.Skip("MountThinFS skipped (not root, or no mkfs.ext4)")
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{fs.storage, fs.mnt} {
		if strings.Contains(string(mounts), " "+dir+" ") {
			t.Errorf("%s is still mounted", dir)
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still exists: %v", dir, err)
		}
	}
	if loopBacking(fs.dev) == fs.disk {
		t.Errorf("%s is still bound to %s", fs.dev, fs.disk)
	}
}

func createFile(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func closeFile(t *testing.T, f *os.File) {
	t.Helper()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func writeSync(t *testing.T, f *os.File, p []byte, off int64) {
	t.Helper()
	if _, err := f.WriteAt(p, off); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		t.Fatal(err)
	}
}

func readAt(t *testing.T, f *os.File, n int, off int64) []byte {
	t.Helper()
	p := make([]byte, n)
	if _, err := f.ReadAt(p, off); err != nil {
		t.Fatal(err)
	}
	return p
}

func requireRead(t *testing.T, f *os.File, want []byte, off int64) {
	t.Helper()
	if got := readAt(t, f, len(want), off); !bytes.Equal(got, want) {
		t.Fatalf("at %d: read %q..., want %q...", off, got[:8], want[:8])
	}
}
