package testtools

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// ThinFS is an ext4 filesystem on thin storage, mounted for one test: its
// device is a loop device over a sparse file on a tmpfs a quarter of the
// filesystem's size, so the filesystem believes in space its storage may
// not have, as on a thin-provisioned volume (dm-thin, a SAN LUN, a cloud
// disk). Fill exhausts the storage: the filesystem still takes writes, but
// writing back a block that was never written before fails with ENOSPC
// (BLK_STS_NOSPC), and fdatasync reports it. FillFilesystem exhausts the
// filesystem itself: writes that need a new block fail with ENOSPC at
// once. Free gives all that space back.
//
// The filesystem has no journal (nothing but the test's own writes reach
// the storage at times the test does not choose) and never zeroes inode
// tables in the background (noinit_itable) nor discards.
type ThinFS struct {
	// Dir is an empty directory on the filesystem, for the test's files.
	Dir string

	t       testing.TB
	storage string // the tmpfs mount
	mnt     string // the ext4 mount
	dev     string // the loop device
	disk    string // the file on the storage it is bound to
	busy    bool   // a mount could not be taken down: leave the rest
}

// MountThinFS mounts a ThinFS of size bytes for t (at least 8 MiB) and
// takes it down when t ends, pass or fail: unmounted, its loop device
// freed, its storage gone. It needs root and mkfs.ext4 (Need's rule: a
// failure in CI, a skip elsewhere). A file of it the test leaves open
// fails the test at cleanup.
func MountThinFS(t testing.TB, size int64) *ThinFS {
	t.Helper()
	NeedRoot(t)
	mkfs := Need(t, "mkfs.ext4")[0]
	if size < 8<<20 {
		t.Fatalf("MountThinFS: %d bytes is too small for ext4 and its test files", size)
	}
	base := t.TempDir()
	fs := &ThinFS{
		t:       t,
		storage: filepath.Join(base, "storage"),
		mnt:     filepath.Join(base, "fs"),
	}
	for _, d := range []string{fs.storage, fs.mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	storageSize := (size/4 + 4095) &^ 4095
	fs.mount("tmpfs", fs.storage, "tmpfs", fmt.Sprintf("size=%d,mode=0700", storageSize))

	disk := filepath.Join(fs.storage, "disk")
	if err := os.WriteFile(disk, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(disk, size); err != nil {
		t.Fatal(err)
	}
	dev, devFile, err := attachLoop(disk)
	if err != nil {
		t.Fatalf("MountThinFS: binding a loop device: %v", err)
	}
	fs.dev, fs.disk = dev, disk
	t.Cleanup(fs.waitLoopFree)
	// Until the mount holds the device, this descriptor keeps it bound.
	defer devFile.Close()

	out, err := exec.Command(mkfs, "-q", "-F", "-b", "4096", "-m", "0", "-i", "65536",
		"-O", "^has_journal", "-E", "lazy_itable_init=1,nodiscard", dev).CombinedOutput()
	if err != nil {
		t.Fatalf("MountThinFS: mkfs.ext4 %s: %v\n%s", dev, err, out)
	}
	fs.mount(dev, fs.mnt, "ext4", "errors=continue,noinit_itable")
	fs.Dir = filepath.Join(fs.mnt, "data")
	if err := os.Mkdir(fs.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return fs
}

// mount mounts src on dir and registers its unmount.
func (fs *ThinFS) mount(src, dir, fstype, data string) {
	fs.t.Helper()
	if err := unix.Mount(src, dir, fstype, 0, data); err != nil {
		fs.t.Fatalf("MountThinFS: mount -t %s -o %s %s %s: %v", fstype, data, src, dir, err)
	}
	fs.t.Cleanup(func() { fs.unmount(dir) })
}

// unmount takes dir down. A mount still in use (a file left open) is
// detached lazily, the test fails, and the cleanups after it do not wait
// for what it holds.
func (fs *ThinFS) unmount(dir string) {
	if fs.busy {
		_ = unix.Unmount(dir, unix.MNT_DETACH)
		return
	}
	err := unix.Unmount(dir, 0)
	if errors.Is(err, unix.EBUSY) {
		fs.busy = true
		fs.t.Errorf("ThinFS: %s is still in use at the end of the test (a file left open?); detached lazily", dir)
		err = unix.Unmount(dir, unix.MNT_DETACH)
	}
	if err != nil {
		fs.t.Errorf("ThinFS: unmount %s: %v", dir, err)
	}
}

// waitLoopFree waits for the loop device to unbind itself, which it does
// once the filesystem on it is unmounted (LO_FLAGS_AUTOCLEAR); the
// storage can be unmounted only after that.
func (fs *ThinFS) waitLoopFree() {
	if fs.busy {
		return
	}
	WaitFor(fs.t, fs.dev+" to unbind after the unmount", func() bool { return loopBacking(fs.dev) != fs.disk })
}
