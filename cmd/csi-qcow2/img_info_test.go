package main

import (
	"path/filepath"
	"strings"
	"testing"
)

// makeChain builds, with qemu-img and qemu-io, base.qcow2 (data in its
// first two clusters) and top.qcow2 on it (its own data, a zero cluster and
// a discarded range) in the current directory.
func makeChain(t *testing.T) {
	t.Helper()
	mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "base.qcow2", "64M")
	qemuIO(t, "qcow2", "base.qcow2", "write -P 0xab 0 128k", "write -P 0x11 8M 64k")
	mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2")
	qemuIO(t, "qcow2", "top.qcow2", "write -P 0xcd 64k 64k", "write -z 512k 64k", "discard 1M 64k", "write -P 0x22 10M 4k")
}

// TestInfoMatchesQemu compares info in both layouts, with and without
// --backing-chain, on images written by QEMU.
func TestInfoMatchesQemu(t *testing.T) {
	needQemu(t)
	dir := chdirTemp(t)
	makeChain(t)
	mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10,cluster_size=4k", "v2.qcow2", "1M")
	mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on,refcount_bits=64", "lazy.qcow2", "5000")
	mustQemu(t, "qemu-img", "create", "-q", "-f", "raw", "disk.raw", "10M")
	mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "disk.raw", "-F", "raw", "over-raw.qcow2")
	// qemu-io's abort leaves the dirty bit of a lazy-refcounts image set.
	mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", "dirty.qcow2", "1M")
	qemu(t, "qemu-io", "-f", "qcow2", "-c", "write 0 64k", "-c", "abort", "dirty.qcow2")

	// Persistent bitmaps: an enabled one and a disabled one (empty flags).
	mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "bitmaps.qcow2", "1M")
	mustQemu(t, "qemu-img", "bitmap", "--add", "bitmaps.qcow2", "b0")
	mustQemu(t, "qemu-img", "bitmap", "--add", "-g", "1M", "--disable", "bitmaps.qcow2", "off")
	files := []string{"base.qcow2", "top.qcow2", filepath.Join(dir, "top.qcow2"), "v2.qcow2", "lazy.qcow2",
		"disk.raw", "over-raw.qcow2", "dirty.qcow2", "bitmaps.qcow2"}
	for _, f := range files {
		for _, flags := range [][]string{
			nil, {"--output=json"}, {"--backing-chain"}, {"--backing-chain", "--output=json"},
		} {
			args := append(append([]string{"info"}, flags...), f)
			t.Run(strings.Join(args[1:], " "), func(t *testing.T) {
				assertSame(t, strings.Join(args, " "), img(t, args...), mustQemu(t, "qemu-img", args...))
			})
		}
	}
	t.Run("forced raw", func(t *testing.T) {
		args := []string{"info", "-f", "raw", "--output=json", "top.qcow2"}
		assertSame(t, strings.Join(args, " "), img(t, args...), mustQemu(t, "qemu-img", args...))
	})
}

func TestInfoMissingBacking(t *testing.T) {
	needQemu(t)
	chdirTemp(t)
	mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "gone.qcow2", "-F", "qcow2", "orphan.qcow2", "1M")
	// Without --backing-chain the backing file is not opened (as qemu-img).
	assertSame(t, "info", img(t, "info", "orphan.qcow2"), mustQemu(t, "qemu-img", "info", "orphan.qcow2"))
	if r := cli(t, "img", "info", "--backing-chain", "orphan.qcow2"); r.code != 1 || !strings.HasPrefix(r.stderr, errPrefix) {
		t.Errorf("--backing-chain with a missing backing file: exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestInfoErrors(t *testing.T) {
	chdirTemp(t)
	for _, args := range [][]string{
		{"img", "info", "nonexistent"},
		{"img", "info", "--output=xml", "x"},
		{"img", "info", "-f", "vmdk", "x"},
		{"img", "info"},
	} {
		if r := cli(t, args...); r.code != 1 || !strings.HasPrefix(r.stderr, errPrefix) {
			t.Errorf("%v: exit %d, stderr %q", args, r.code, r.stderr)
		}
	}
}
