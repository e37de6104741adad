package main

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestMapMatchesQemu compares map in both layouts on a QEMU-written chain,
// on each of its layers, on a raw file and on a qcow2 over a raw file.
func TestMapMatchesQemu(t *testing.T) {
	needQemu(t)
	dir := chdirTemp(t)
	makeChain(t)
	mustQemu(t, "qemu-img", "create", "-q", "-f", "raw", "disk.raw", "4M")
	qemuIO(t, "raw", "disk.raw", "write -P 7 64k 64k", "write -P 8 1M 8k")
	mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "disk.raw", "-F", "raw", "over-raw.qcow2")
	qemuIO(t, "qcow2", "over-raw.qcow2", "write -P 9 0 64k", "write -z 1M 64k")
	// Not compared: metadata-preallocated images, where QEMU looks through
	// allocated clusters at holes of the host file (docs/limitations.md).
	for _, f := range []string{"top.qcow2", filepath.Join(dir, "top.qcow2"), "base.qcow2", "disk.raw",
		"over-raw.qcow2"} {
		for _, flags := range [][]string{nil, {"--output=json"}} {
			args := append(append([]string{"map"}, flags...), f)
			t.Run(strings.Join(args[1:], " "), func(t *testing.T) {
				assertSame(t, strings.Join(args, " "), img(t, args...), mustQemu(t, "qemu-img", args...))
			})
		}
	}
	for _, args := range [][]string{
		{"map", "--output=json", "-f", "raw", "top.qcow2"},
		{"map", "--output=json", "--start-offset=1M", "--max-length=9M", "top.qcow2"},
	} {
		t.Run(strings.Join(args[1:], " "), func(t *testing.T) {
			assertSame(t, strings.Join(args, " "), img(t, args...), mustQemu(t, "qemu-img", args...))
		})
	}
}

func TestMapEmptyImage(t *testing.T) {
	needQemu(t)
	chdirTemp(t)
	img(t, "create", "-q", "-f", "qcow2", "empty.qcow2", "1G")
	for _, flags := range [][]string{nil, {"--output=json"}} {
		args := append(append([]string{"map"}, flags...), "empty.qcow2")
		assertSame(t, strings.Join(args, " "), img(t, args...), mustQemu(t, "qemu-img", args...))
	}
}

func TestMapCompressed(t *testing.T) {
	needQemu(t)
	chdirTemp(t)
	mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "plain.qcow2", "1M")
	qemuIO(t, "qcow2", "plain.qcow2", "write -P 5 0 192k")
	mustQemu(t, "qemu-img", "convert", "-c", "-O", "qcow2", "plain.qcow2", "comp.qcow2")
	args := []string{"map", "--output=json", "comp.qcow2"}
	assertSame(t, strings.Join(args, " "), img(t, args...), mustQemu(t, "qemu-img", args...))
	// The human layout cannot show compressed clusters.
	r := cli(t, "img", "map", "comp.qcow2")
	if r.code != 1 || r.stderr != errPrefix+"File contains external, encrypted or compressed clusters.\n" {
		t.Errorf("map comp.qcow2: exit %d, stderr %q", r.code, r.stderr)
	}
}
