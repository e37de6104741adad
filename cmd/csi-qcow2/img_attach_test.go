package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The kernel paths run in the VM test bed (test/e2e/vm); here: what must
// fail before any device is touched, and the image lock.

func TestImgAttachRefusesBadInput(t *testing.T) {
	dir := t.TempDir()
	disk := filepath.Join(dir, "d.qcow2")
	img(t, "create", "-f", "qcow2", disk, "1M")
	odd := filepath.Join(dir, "odd.raw")
	if err := os.WriteFile(odd, make([]byte, 1536), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, args := range map[string][]string{
		"missing image":        {"attach", filepath.Join(dir, "nope.qcow2")},
		"block size 1000":      {"attach", "--block-size", "1000", disk},
		"size not 4K-aligned":  {"attach", "-f", "raw", "--block-size", "4096", odd},
		"not an nbd device":    {"attach", "--device", "/dev/sda", disk},
		"newline in id":        {"attach", "--id", "a\nb", disk},
		"17 connections":       {"attach", "--connections", "17", disk},
		"detach of no device":  {"detach", "/dev/nbd9999"},
		"detach of unknown id": {"detach", "no-such-volume"},
	} {
		r := cli(t, append([]string{"img"}, args...)...)
		if r.code == 0 || !strings.HasPrefix(r.stderr, errPrefix) {
			t.Errorf("%s: exit %d, stderr %q: want a clear error", name, r.code, r.stderr)
		}
	}
}

func TestImgAttachLocksTheImage(t *testing.T) {
	disk := filepath.Join(t.TempDir(), "d.qcow2")
	img(t, "create", "-f", "qcow2", disk, "1M")
	lock, err := lockForServing(disk)
	if err != nil {
		t.Fatal(err)
	}
	r := cli(t, "img", "attach", disk)
	if r.code == 0 || !strings.Contains(r.stderr, "being served by another process") {
		t.Errorf("attach of a locked image: exit %d, stderr %q", r.code, r.stderr)
	}
	lock.Close()
	if l, err := lockForServing(disk); err != nil {
		t.Errorf("lock after release: %v", err)
	} else {
		l.Close()
	}
}

func TestImgListWithoutDevices(t *testing.T) {
	r := cli(t, "img", "list")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "DEVICE") {
		t.Fatalf("img list: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
}
