package fuseloop

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
	"github.com/csi-qcow2/csi-qcow2/pkg/nbdattach"
	"golang.org/x/sys/unix"
)

// Detach leaves no mount and no loop binding: while the device is open
// elsewhere it refuses (ErrBusy) and keeps serving, and once let go a
// second Detach takes everything down, also after backend errors.
func TestDetachLeavesNothing(t *testing.T) {
	testtools.NeedRoot(t)
	b := newBackend(t, 8<<20)
	a, err := Attach(b, Options{Dir: filepath.Join(t.TempDir(), "mnt"), Name: "disk"})
	if err != nil {
		t.Fatal(err)
	}
	if !mounted(t, a.dir) || !loopBoundTo(a.Device(), a.File()) {
		t.Fatalf("Attach left no mount or no loop binding")
	}
	holder, err := os.OpenFile(a.Device(), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	// A failing write before detaching: the error path must not leave
	// anything behind either.
	b.failWrites(syscall.EIO)
	if _, err := holder.WriteAt(make([]byte, 4096), 0); err == nil {
		if err := holder.Sync(); err == nil {
			t.Errorf("write to a failing backend succeeded")
		}
	}
	if err := a.Detach(); !errors.Is(err, ErrBusy) {
		t.Fatalf("Detach with the device open = %v, want ErrBusy", err)
	}
	if !mounted(t, a.dir) {
		t.Fatalf("a refused Detach unmounted the file system under a user")
	}
	holder.Close()
	if err := a.Detach(); err != nil {
		t.Fatal(err)
	}
	assertGone(t, a)
	if err := a.Detach(); err != nil {
		t.Fatalf("Detach after Detach: %v", err)
	}
}

// Attach fails cleanly (nothing left) when the options are wrong.
func TestAttachRefusesBadOptions(t *testing.T) {
	testtools.NeedRoot(t)
	b := newBackend(t, 8<<20+512)
	dir := filepath.Join(t.TempDir(), "mnt")
	for _, o := range []Options{
		{Dir: dir, Name: "disk", BlockSize: 4096}, // size not a multiple
		{Dir: dir, Name: "disk", BlockSize: 1024},
		{Dir: dir, Name: "a/b"},
	} {
		if a, err := Attach(b, o); err == nil {
			a.Detach()
			t.Errorf("Attach(%+v) succeeded", o)
		}
		if mounted(t, dir) {
			t.Fatalf("a failed Attach left %s mounted", dir)
		}
	}
	// A directory in use by another attachment is refused, and the
	// refusal leaves that attachment working.
	ok := newBackend(t, 8<<20)
	a := attach(t, ok, 512)
	if a2, err := Attach(ok, Options{Dir: a.dir, Name: "other"}); err == nil {
		a2.Detach()
		t.Errorf("Attach on a mounted directory succeeded")
	}
	if _, err := os.Stat(a.File()); err != nil {
		t.Errorf("the first attachment's file after the refused Attach: %v", err)
	}
}

// A read-only backend gives a read-only device: writes fail, reads work.
func TestReadOnlyBackend(t *testing.T) {
	testtools.NeedRoot(t)
	rw := newBackend(t, 8<<20)
	fb, err := nbdattach.OpenFileBackend(rw.path, true)
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	a, err := Attach(fb, Options{Dir: filepath.Join(t.TempDir(), "mnt"), Name: "disk"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := a.Detach(); err != nil {
			t.Error(err)
		}
		assertGone(t, a)
	}()
	if ro, _ := os.ReadFile("/sys/block/" + filepath.Base(a.Device()) + "/ro"); string(ro) != "1\n" {
		t.Errorf("%s ro = %q, want 1", a.Device(), ro)
	}
	// The kernel may refuse the open or the write; either way nothing
	// is written.
	if f, err := os.OpenFile(a.Device(), os.O_RDWR|unix.O_DIRECT, 0); err == nil {
		_, err := f.WriteAt(alignedBuf(4096), 0)
		f.Close()
		if err == nil {
			t.Errorf("a write to a read-only device succeeded")
		}
	}
	f, err := os.Open(a.Device())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
}

// A user writes through the loop device's page cache and closes it
// without a sync (a pod's `dd of=/dev/...` with no conv=fsync, then its
// exit): the attachment's own descriptor keeps the close from being the
// last, so the kernel flushes nothing then. Detach must write those
// pages to the backend before it clears the device: once cleared, the
// kernel's flush at the last close fails against the unbound device and
// the bytes are lost.
func TestDetachWritesBackBufferedWrites(t *testing.T) {
	testtools.NeedRoot(t)
	b := newBackend(t, 8<<20)
	a, err := Attach(b, Options{Dir: filepath.Join(t.TempDir(), "mnt"), Name: "disk"})
	if err != nil {
		t.Fatal(err)
	}
	user, err := os.OpenFile(a.Device(), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := []byte("written through the page cache, never synced")
	if _, err := user.WriteAt(want, 4096+64); err != nil {
		t.Fatal(err)
	}
	user.Close()
	if err := a.Detach(); err != nil {
		t.Fatal(err)
	}
	assertGone(t, a)
	got := make([]byte, len(want))
	if _, err := b.ReadAt(got, 4096+64); err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Fatalf("backend holds %q after Detach, the user wrote %q", got, want)
	}
}
