package fuseloop

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
)

// gatedBackend blocks the first write at gateOff until released.
type gatedBackend struct {
	*countingBackend
	gateOff int64
	once    sync.Once
	entered chan struct{}
	release chan struct{}
}

func (b *gatedBackend) WriteAt(p []byte, off int64) (int, error) {
	if off <= b.gateOff && b.gateOff < off+int64(len(p)) {
		b.once.Do(func() {
			close(b.entered)
			<-b.release
		})
	}
	return b.countingBackend.WriteAt(p, off)
}

// A second user opens the device while Detach's fsync is writing back
// what the first left dirty, writes through the page cache and closes
// (the kernel acknowledged the write). Its page was dirtied after the
// fsync tagged the pages it writes, so only the last close can write it
// back: that close must find the device still bound (a LOOP_CLR_FD, with
// only Detach holding the device, ran it down first and lost the page).
func TestDetachKeepsWritesMadeDuringItsWriteBack(t *testing.T) {
	testtools.NeedRoot(t)
	b := &gatedBackend{countingBackend: newBackend(t, 8<<20), gateOff: 0,
		entered: make(chan struct{}), release: make(chan struct{})}
	a, err := Attach(b, Options{Dir: filepath.Join(t.TempDir(), "mnt"), Name: "disk"})
	if err != nil {
		t.Fatal(err)
	}
	first := []byte("first user, never synced")
	second := []byte("second user, written while Detach runs, never synced")
	u1, err := os.OpenFile(a.Device(), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := u1.WriteAt(first, 0); err != nil {
		t.Fatal(err)
	}
	u1.Close()

	done := make(chan error, 1)
	go func() { done <- a.Detach() }()
	select {
	case <-b.entered: // Detach's fsync is writing back page 0
	case <-time.After(10 * time.Second):
		t.Fatal("Detach's fsync never reached the backend")
	}
	u2, err := os.OpenFile(a.Device(), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := u2.WriteAt(second, 1<<20); err != nil {
		t.Fatal(err)
	}
	u2.Close()
	close(b.release)
	if err := <-done; err != nil {
		t.Fatalf("Detach: %v", err)
	}
	assertGone(t, a)
	for _, c := range []struct {
		off  int64
		want []byte
	}{{0, first}, {1 << 20, second}} {
		got := make([]byte, len(c.want))
		if _, err := b.ReadAt(got, c.off); err != nil {
			t.Fatal(err)
		}
		if string(got) != string(c.want) {
			t.Errorf("backend at %d holds %q after a Detach that succeeded; the user wrote %q", c.off, got, c.want)
		}
	}
}

// A write-back error the user already got from its own fsync (and
// recovered from) is not reported again by Detach as ErrWriteBack ("those
// bytes are lost"): nothing was left dirty. (A descriptor opened at
// Attach would sample the device's error sequence then, and report it.)
func TestDetachReportsOnlyUnseenWriteBackErrors(t *testing.T) {
	b := newBackend(t, 8<<20)
	a, u := attachWithUser(t, b)
	b.failWrites(syscall.ENOSPC)
	if _, err := u.WriteAt([]byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	if err := u.Sync(); err == nil {
		t.Fatal("fsync through a failing backend succeeded")
	}
	b.writeErr.Store(nil)
	if _, err := u.WriteAt([]byte("y"), 0); err != nil {
		t.Fatal(err)
	}
	if err := u.Sync(); err != nil {
		t.Fatal(err)
	}
	u.Close()
	err := a.Detach()
	assertGone(t, a)
	if errors.Is(err, ErrWriteBack) {
		t.Fatalf("Detach after the user saw, and recovered from, its write error: %v (nothing was left dirty)", err)
	} else if err != nil {
		t.Fatal(err)
	}
}

// Detach returns ErrWriteBack joined with ErrBusy when a write-back fails
// while someone else holds the device; the driver's fuseDevice.Detach
// retries on ErrBusy, and the retry that completes must report the
// write-back failure again (it has no descriptor left to fsync).
func TestDetachReportsWriteBackAfterBusyRetry(t *testing.T) {
	b := newBackend(t, 8<<20)
	a, u := attachWithUser(t, b)
	holder, err := os.OpenFile(a.Device(), os.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := u.WriteAt([]byte("lost"), 0); err != nil {
		t.Fatal(err)
	}
	u.Close()
	b.failWrites(syscall.EIO)
	err = a.Detach()
	if !errors.Is(err, ErrBusy) || !errors.Is(err, ErrWriteBack) {
		t.Fatalf("first Detach: %v, want ErrBusy and ErrWriteBack", err)
	}
	b.writeErr.Store(nil)
	holder.Close()
	// What fuseDevice.Detach does on ErrBusy: call again.
	err = a.Detach()
	assertGone(t, a)
	if !errors.Is(err, ErrWriteBack) {
		t.Errorf("retry after ErrBusy: %v; the write-back failure of the first call is no longer reported", err)
	}
}

// attachWithUser attaches b and opens its device read-write, as a user.
func attachWithUser(t *testing.T, b *countingBackend) (*Attachment, *os.File) {
	t.Helper()
	testtools.NeedRoot(t)
	a, err := Attach(b, Options{Dir: filepath.Join(t.TempDir(), "mnt"), Name: "disk"})
	if err != nil {
		t.Fatal(err)
	}
	u, err := os.OpenFile(a.Device(), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	return a, u
}
