package qcow2_test

// Image locks against QEMU's own tools (Debian qemu-utils 7.2): the same
// bytes for the same kind of open, and each side refusing the other as
// QEMU refuses itself.

import (
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/qemutest"
	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// TestLockBytesLikeQEMU: for a writer, a reader and a forced-share reader
// of an overlay, we hold exactly the lock bytes qemu-io holds, on the
// overlay and on its backing file.
func TestLockBytesLikeQEMU(t *testing.T) {
	testtools.Need(t, "qemu-io")
	base, top := lockChain(t)
	for _, c := range []struct {
		name string
		args []string
		opts qcow2.Options
	}{
		{"writer", nil, qcow2.Options{}},
		{"reader", []string{"-r"}, qcow2.Options{ReadOnly: true}},
		{"forced-share reader", []string{"-r", "-U"}, qcow2.Options{ReadOnly: true, ForceShare: true}},
	} {
		h := qemutest.HoldImage(t, top, "qcow2", c.args...)
		qTop, qBase := heldBytes(t, top), heldBytes(t, base)
		h.Release()
		if len(qTop) == 0 {
			t.Fatalf("%s: qemu-io holds no lock bytes on the image", c.name)
		}
		img := mustOpen(t, top, c.opts)
		oTop, oBase := heldBytes(t, top), heldBytes(t, base)
		closeOrFail(t, img)
		if !slices.Equal(oTop, qTop) || !slices.Equal(oBase, qBase) {
			t.Errorf("%s: we hold %v on the image and %v on its backing file, qemu-io %v and %v", c.name, oTop, oBase, qTop, qBase)
		}
	}
}

// qemuRefused runs a QEMU tool that must fail on a lock conflict, naming
// it as QEMU does.
func qemuRefused(t *testing.T, want string, prog string, args ...string) {
	t.Helper()
	r := qemutest.RunExit(t, prog, args...)
	if r.ExitCode == 0 || !strings.Contains(string(r.Stderr), want) {
		t.Errorf("want a failure naming %q:\n%s", want, r)
	}
}

// qemuAccepted runs a QEMU tool that must succeed.
func qemuAccepted(t *testing.T, prog string, args ...string) {
	t.Helper()
	if r := qemutest.RunExit(t, prog, args...); r.ExitCode != 0 {
		t.Errorf("want success:\n%s", r)
	}
}

const (
	qemuNoShareWrite = `Failed to get shared "write" lock`
	qemuNoWrite      = `Failed to get "write" lock`
)

// TestLockQEMURefusesOurs: an image we have open for writing is refused
// by qemu-img and qemu-io unless they force-share; its backing file can
// be read but not written. An image we read cannot be written by QEMU; a
// forced-share reader of ours keeps QEMU out of nothing.
func TestLockQEMURefusesOurs(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	base, top := lockChain(t)

	w := mustOpen(t, top, qcow2.Options{})
	qemuRefused(t, qemuNoShareWrite, "qemu-img", "info", top)
	qemuAccepted(t, "qemu-img", "info", "-U", top)
	qemuRefused(t, qemuNoShareWrite, "qemu-img", "check", top)
	qemuAccepted(t, "qemu-img", "check", "-U", top)
	qemuRefused(t, qemuNoWrite, "qemu-img", "check", "-r", "all", top)
	qemuRefused(t, qemuNoWrite, "qemu-img", "commit", top)
	qemuRefused(t, qemuNoWrite, "qemu-io", "-c", "read 0 512", top)
	qemuAccepted(t, "qemu-io", "-r", "-U", "-c", "read -P 0x11 0 64k", top)
	qemuRefused(t, qemuNoWrite, "qemu-io", "-c", "write 0 512", base)
	qemuAccepted(t, "qemu-img", "info", base)
	closeOrFail(t, w)

	r := mustOpen(t, top, qcow2.Options{ReadOnly: true})
	qemuAccepted(t, "qemu-img", "info", "--backing-chain", top)
	qemuRefused(t, qemuNoWrite, "qemu-io", "-c", "write 0 512", top)
	qemuRefused(t, qemuNoWrite, "qemu-io", "-c", "write 0 512", base)
	closeOrFail(t, r)

	s := mustOpen(t, top, qcow2.Options{ReadOnly: true, ForceShare: true})
	qemuAccepted(t, "qemu-io", "-c", "write -P 0x22 0 512", top)
	closeOrFail(t, s)
	qemuAccepted(t, "qemu-io", "-c", "write 0 512", top)
}

// TestLockWeRefuseQEMU: an image a running qemu-io has open for writing
// is refused by our Open (writer and reader), Check and Commit with
// ErrLocked and an error that names the conflict; force-share reads it;
// its backing file can be read, not written. A qemu-io reader lets our
// readers in and keeps our writers out; a forced-share one keeps no one
// out.
func TestLockWeRefuseQEMU(t *testing.T) {
	testtools.Need(t, "qemu-io")
	base, top := lockChain(t)

	h := qemutest.HoldImage(t, top, "qcow2")
	_, err := qcow2.Open(top, qcow2.Options{})
	wantLocked(t, "writer", err)
	if !strings.Contains(err.Error(), `lock`) || !strings.Contains(err.Error(), top) {
		t.Errorf("error does not name the image and the lock conflict: %v", err)
	}
	_, err = qcow2.Open(top, qcow2.Options{ReadOnly: true})
	wantLocked(t, "reader", err)
	_, err = qcow2.Check(top, qcow2.CheckOptions{})
	wantLocked(t, "check", err)
	_, err = qcow2.Check(top, qcow2.CheckOptions{Repair: qcow2.RepairLeaks})
	wantLocked(t, "check -r leaks", err)
	wantLocked(t, "commit", qcow2.Commit(top, qcow2.BackingPolicy{}, false))
	if res, err := qcow2.Check(top, qcow2.CheckOptions{ForceShare: true}); err != nil || res.ExitCode() != 0 {
		t.Errorf("forced-share check: %+v, %v", res, err)
	}
	closeOrFail(t, mustOpen(t, top, qcow2.Options{ReadOnly: true, ForceShare: true}))
	_, err = qcow2.Open(base, qcow2.Options{})
	wantLocked(t, "writer of the backing file", err)
	closeOrFail(t, mustOpen(t, base, qcow2.Options{ReadOnly: true}))
	h.Release()
	closeOrFail(t, mustOpen(t, top, qcow2.Options{}))

	h = qemutest.HoldImage(t, top, "qcow2", "-r")
	closeOrFail(t, mustOpen(t, top, qcow2.Options{ReadOnly: true}))
	_, err = qcow2.Open(top, qcow2.Options{})
	wantLocked(t, "writer while qemu-io reads", err)
	h.Release()

	h = qemutest.HoldImage(t, top, "qcow2", "-r", "-U")
	closeOrFail(t, mustOpen(t, top, qcow2.Options{}))
	h.Release()
}

// TestLockWeRefuseQemuNBD: a running qemu-nbd serving an image writable
// keeps our Open out until it exits.
func TestLockWeRefuseQemuNBD(t *testing.T) {
	testtools.Need(t, "qemu-nbd")
	_, top := lockChain(t)
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	cmd := exec.Command("qemu-nbd", "-f", "qcow2", "-k", sock, top)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			// It has written nothing: a kill is as good as a clean
			// exit here, and its locks go with the process.
			cmd.Process.Kill()
			testtools.Within(t, "qemu-nbd to exit on SIGKILL", exited)
		}
	}
	defer stop()
	// Ready when all its locks are on the image: its socket was seen to
	// appear before them.
	testtools.WaitFor(t, "qemu-nbd's locks on the image", func() bool {
		select {
		case err := <-exited:
			t.Fatalf("qemu-nbd exited: %v", err)
		default:
		}
		return slices.Equal(heldBytes(t, top), writerBytes)
	})
	_, err := qcow2.Open(top, qcow2.Options{})
	wantLocked(t, "writer while qemu-nbd serves", err)
	_, err = qcow2.Open(top, qcow2.Options{ReadOnly: true})
	wantLocked(t, "reader while qemu-nbd serves", err)
	stop()
	closeOrFail(t, mustOpen(t, top, qcow2.Options{}))
}
