package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
)

// serveInBackground runs `img serve args...` until the returned function
// (also a cleanup) stops it with SIGTERM, as a signal to the service does.
func serveInBackground(t *testing.T, sock string, args ...string) (stop func()) {
	t.Helper()
	done := make(chan result, 1)
	go func() { done <- cli(t, append([]string{"img", "serve", "--socket", sock}, args...)...) }()
	waitForSocket(t, sock, done)
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if r := testtools.Within(t, "img serve to stop on SIGTERM", done); r.code != 0 {
			t.Errorf("img serve: exit %d: %s", r.code, r.stderr)
		}
	}
	t.Cleanup(stop)
	return stop
}

// wantRefused runs an img command that a lock must refuse.
func wantRefused(t *testing.T, args ...string) {
	t.Helper()
	r := cli(t, append([]string{"img"}, args...)...)
	if r.code == 0 || !strings.Contains(r.stderr, "lock") {
		t.Errorf("img %s: exit %d, stderr %q; want a refusal naming the lock", strings.Join(args, " "), r.code, r.stderr)
	}
}

// TestImgLockServe: while `img serve` serves an image writable, every
// command that would become a second writer (commit, check -r, a second
// serve, rebase, resize, amend, snapshot -c, bitmap, create and convert
// over it) or read it without -U is refused, and so is QEMU; with -U the
// read commands work; its backing file cannot be written. Once the
// server is gone, they work.
func TestImgLockServe(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	base, disk := filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "disk.qcow2")
	other := filepath.Join(dir, "other.qcow2")
	img(t, "create", "-f", "qcow2", base, "4M")
	img(t, "create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", disk)
	img(t, "create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", other)
	qemuIO(t, "qcow2", disk, "write -P 0x5a 0 64k")
	stop := serveInBackground(t, filepath.Join(dir, "nbd.sock"), disk)

	for _, args := range [][]string{
		{"commit", disk},
		{"check", "-r", "all", disk},
		{"check", "-r", "leaks", disk},
		{"check", disk},
		{"info", disk},
		{"map", disk},
		{"compare", disk, base},
		{"convert", "-O", "qcow2", disk, filepath.Join(dir, "copy.qcow2")},
		{"measure", "-O", "qcow2", disk},
		{"snapshot", "-l", disk},
		{"snapshot", "-c", "s1", disk},
		{"rebase", "-u", "-b", "", disk},
		{"resize", disk, "8M"},
		{"amend", "-o", "lazy_refcounts=on", disk},
		{"bitmap", "--add", disk, "b0"},
		{"serve", "--socket", filepath.Join(dir, "second.sock"), disk},
		// Overwriting it would delete what the server writes.
		{"create", "-f", "qcow2", disk, "4M"},
		{"convert", "-O", "qcow2", other, disk},
		// The server reads the backing file: no one may write it.
		{"resize", base, "8M"},
		{"commit", other},
	} {
		wantRefused(t, args...)
	}
	for _, args := range [][]string{
		{"check", "-U", disk},
		{"info", "-U", "--backing-chain", disk},
		{"map", "-U", disk},
		{"compare", "-U", disk, disk},
		{"convert", "-U", "-O", "qcow2", disk, filepath.Join(dir, "copy.qcow2")},
		{"measure", "-U", "-O", "qcow2", disk},
		{"snapshot", "-U", "-l", disk},
		{"info", base},
	} {
		img(t, args...)
	}
	for _, args := range [][]string{
		{"check", "-U", "-r", "all", disk},
		{"snapshot", "-U", "-c", "s1", disk},
	} {
		if r := cli(t, append([]string{"img"}, args...)...); r.code != 1 || !strings.Contains(r.stderr, "force-share") {
			t.Errorf("img %s: exit %d, stderr %q; want force-share refused for a writer", strings.Join(args, " "), r.code, r.stderr)
		}
	}
	if r := qemu(t, "qemu-img", "info", disk); r.code == 0 || !strings.Contains(r.stderr, `Failed to get shared "write" lock`) {
		t.Errorf("qemu-img info of a served image: exit %d, stderr %q", r.code, r.stderr)
	}
	mustQemu(t, "qemu-img", "info", "-U", disk)
	if r := qemu(t, "qemu-img", "commit", disk); r.code == 0 || !strings.Contains(r.stderr, `Failed to get "write" lock`) {
		t.Errorf("qemu-img commit of a served image: exit %d, stderr %q", r.code, r.stderr)
	}

	stop()
	img(t, "check", disk)
	qemuIO(t, "qcow2", disk, "read -P 0x5a 0 64k")
	img(t, "commit", disk)
}

// TestImgLockServeRaw: a raw image `img serve` serves writable is locked
// too (the NBD file backend knows nothing of locks; the CLI takes them).
func TestImgLockServeRaw(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.raw")
	img(t, "create", "-f", "raw", raw, "1M")
	stop := serveInBackground(t, filepath.Join(dir, "nbd.sock"), "-f", "raw", raw)
	wantRefused(t, "info", "-f", "raw", raw)
	img(t, "info", "-U", "-f", "raw", raw)
	if r := qemu(t, "qemu-io", "-f", "raw", "-c", "write 0 512", raw); r.code == 0 || !strings.Contains(r.stderr, `Failed to get "write" lock`) {
		t.Errorf("qemu-io writing a served raw image: exit %d, stderr %q", r.code, r.stderr)
	}
	stop()
	mustQemu(t, "qemu-io", "-f", "raw", "-c", "write 0 512", raw)
}

// TestImgLockReadOnlyServe: a read-only server lets readers in and keeps
// writers out.
func TestImgLockReadOnlyServe(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.qcow2")
	img(t, "create", "-f", "qcow2", disk, "1M")
	stop := serveInBackground(t, filepath.Join(dir, "nbd.sock"), "-r", disk)
	img(t, "info", disk)
	img(t, "check", disk)
	mustQemu(t, "qemu-img", "info", disk)
	wantRefused(t, "check", "-r", "all", disk)
	wantRefused(t, "resize", disk, "2M")
	stop()
	img(t, "resize", disk, "2M")
}
