package main

import (
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
)

// TestImgServe serves a qcow2 image with `img serve`, writes and reads it
// with qemu-io over NBD, stops the server with SIGTERM, and checks that the
// image is clean and holds the data.
func TestImgServe(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	image := filepath.Join(dir, "disk.qcow2")
	sock := filepath.Join(dir, "nbd.sock")
	img(t, "create", "-f", "qcow2", image, "64M")
	done := make(chan result, 1)
	go func() { done <- cli(t, "img", "serve", "--socket", sock, image) }()
	waitForSocket(t, sock, done)
	uri := "nbd+unix:///?socket=" + sock
	if r := qemu(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5c 1M 3M", "-c", "flush", "-c", "read -P 0x5c 1M 3M", uri); r.code != 0 {
		t.Fatalf("qemu-io over NBD: %s%s", r.stdout, r.stderr)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if r := testtools.Within(t, "img serve to stop on SIGTERM", done); r.code != 0 {
		t.Fatalf("img serve: exit %d: %s", r.code, r.stderr)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Error("socket left behind")
	}
	if r := qemu(t, "qemu-img", "check", image); r.code != 0 {
		t.Fatalf("qemu-img check: %s", r.stdout)
	}
	if r := qemu(t, "qemu-io", "-f", "qcow2", "-c", "read -P 0x5c 1M 3M", "-c", "read -P 0 0 1M", image); r.code != 0 {
		t.Fatalf("data after serving: %s%s", r.stdout, r.stderr)
	}
}

func TestImgServeErrors(t *testing.T) {
	dir := t.TempDir()
	image := filepath.Join(dir, "disk.qcow2")
	img(t, "create", "-f", "qcow2", image, "1M")
	notSock := filepath.Join(dir, "file")
	os.WriteFile(notSock, nil, 0o644)
	for _, args := range [][]string{
		{"img", "serve", image},
		{"img", "serve", "--socket", notSock, image},
		{"img", "serve", "--socket", filepath.Join(dir, "s"), filepath.Join(dir, "missing")},
		{"img", "serve", "-f", "vmdk", "--socket", filepath.Join(dir, "s"), image},
	} {
		if r := cli(t, args...); r.code != 1 || r.stderr == "" {
			t.Errorf("%v: exit %d, stderr %q", args, r.code, r.stderr)
		}
	}
}

func waitForSocket(t *testing.T, sock string, done <-chan result) {
	t.Helper()
	testtools.WaitFor(t, "img serve's socket "+sock, func() bool {
		select {
		case r := <-done:
			t.Fatalf("img serve exited %d: %s", r.code, r.stderr)
		default:
		}
		// Listening, not only bound: a client may connect.
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}
