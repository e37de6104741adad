package main

import (
	"strings"
	"testing"
)

func TestSnapshotCLI(t *testing.T) {
	needQemu(t)
	chdirTemp(t)
	mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "a.qcow2", "1M")
	qemuIO(t, "qcow2", "a.qcow2", "write -P 1 0 300k")

	// No snapshots: both print nothing.
	assertSame(t, "empty list", img(t, "snapshot", "-l", "a.qcow2"), mustQemu(t, "qemu-img", "snapshot", "-l", "a.qcow2"))

	mustQemu(t, "qemu-img", "snapshot", "-c", "by-qemu", "a.qcow2")
	qemuIO(t, "qcow2", "a.qcow2", "write -P 2 100k 300k")
	if out := img(t, "snapshot", "-c", "by us, a longer name", "a.qcow2"); out != "" {
		t.Errorf("-c printed %q", out)
	}
	assertCheckClean(t, "a.qcow2")
	qemuIO(t, "qcow2", "a.qcow2", "write -P 3 0 64k")
	want := mustQemu(t, "qemu-img", "snapshot", "-l", "a.qcow2")
	if !strings.Contains(want, "by us, a longer name") {
		t.Fatalf("qemu-img does not list our snapshot:\n%s", want)
	}
	assertSame(t, "-l", img(t, "snapshot", "-l", "a.qcow2"), want)
	assertSame(t, "default action", img(t, "snapshot", "a.qcow2"), want)

	img(t, "snapshot", "-a", "by-qemu", "a.qcow2")
	assertCheckClean(t, "a.qcow2")
	qemuIO(t, "qcow2", "a.qcow2", "read -P 1 0 300k", "read -P 0 300k 724k")
	img(t, "snapshot", "-a", "2", "a.qcow2") // by id
	assertCheckClean(t, "a.qcow2")
	qemuIO(t, "qcow2", "a.qcow2", "read -P 1 0 100k", "read -P 2 100k 300k")

	img(t, "snapshot", "-d", "by-qemu", "a.qcow2")
	assertCheckClean(t, "a.qcow2")
	img(t, "snapshot", "-d", "by us, a longer name", "a.qcow2")
	assertCheckClean(t, "a.qcow2")
	assertSame(t, "list after deletes", img(t, "snapshot", "-l", "a.qcow2"), "")
	qemuIO(t, "qcow2", "a.qcow2", "read -P 1 0 100k", "read -P 2 100k 300k")

	// Failures: same messages and status as qemu-img.
	mustQemu(t, "qemu-img", "snapshot", "-c", "s1", "a.qcow2")
	for _, args := range [][]string{
		{"-a", "nope"},
		{"-d", "nope"},
		{"-d", "1"}, // qemu-img 7.2 deletes by name only
		{"-l", "-c", "x"},
		{"-l"},
	} {
		var files []string
		if args[0] != "-l" || len(args) > 1 {
			files = []string{"a.qcow2"}
		}
		full := append(append([]string{"snapshot"}, args...), files...)
		r := cli(t, append([]string{"img"}, full...)...)
		q := qemu(t, "qemu-img", full...)
		if r.code != q.code {
			t.Errorf("%v: exit %d, qemu-img %d", args, r.code, q.code)
		}
		// qemu-img adds a usage hint line that we do not print.
		qstderr, _, _ := strings.Cut(q.stderr, "Try 'qemu-img --help'")
		assertSame(t, strings.Join(args, " "), r.stderr, strings.ReplaceAll(qstderr, "qemu-img: ", errPrefix))
	}
	assertCheckClean(t, "a.qcow2")

	// A name already taken is refused (qemu-img would add a duplicate).
	if r := cli(t, "img", "snapshot", "-c", "s1", "a.qcow2"); r.code != 1 || !strings.Contains(r.stderr, "exists already") {
		t.Errorf("duplicate name: exit %d, stderr %q", r.code, r.stderr)
	}
}
