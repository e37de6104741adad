package fuseloop

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
	"golang.org/x/sys/unix"
)

// What a dead serving process looks like to the kernel: the FUSE
// connection is aborted. The loop device then fails I/O instead of
// hanging, and Detach still leaves nothing behind.
func TestDetachAfterConnectionAbort(t *testing.T) {
	testtools.NeedRoot(t)
	b := newBackend(t, 8<<20)
	a, err := Attach(b, Options{Dir: filepath.Join(t.TempDir(), "mnt"), Name: "disk"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Detach() }) // if the test stops early; Detach is idempotent
	var st unix.Stat_t
	if err := unix.Stat(a.dir, &st); err != nil {
		t.Fatal(err)
	}
	const ctl = "/sys/fs/fuse/connections"
	if _, err := os.Stat(ctl + "/" + fmt.Sprint(unix.Minor(st.Dev))); os.IsNotExist(err) {
		// fusectl is not mounted on every host. It has one instance,
		// so mounting it here only shows it (and stays, as systemd's
		// would).
		if err := unix.Mount("fusectl", ctl, "fusectl", 0, ""); err != nil {
			t.Fatalf("mount fusectl: %v", err)
		}
	}
	abort := fmt.Sprintf("%s/%d/abort", ctl, unix.Minor(st.Dev))
	if err := os.WriteFile(abort, []byte("1"), 0); err != nil {
		t.Fatalf("abort the FUSE connection: %v", err)
	}
	dev, err := os.OpenFile(a.Device(), os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dev.ReadAt(alignedBuf(4096), 0); err == nil {
		t.Errorf("read through an aborted connection succeeded")
	}
	dev.Close()
	// The write-back through the dead connection fails and says so; the
	// teardown goes on regardless, and a second Detach has nothing left.
	if err := a.Detach(); err != nil && !errors.Is(err, ErrWriteBack) {
		t.Fatal(err)
	}
	assertGone(t, a)
	if err := a.Detach(); err != nil {
		t.Fatalf("Detach after Detach: %v", err)
	}
}
