package main

import (
	"strings"
	"testing"
)

// cmpSetup makes images for compare and measure in the current directory:
// a/b differ in one byte inside data both hold, c is a's content in a
// larger image with data past a's end, d/e differ where only e has data,
// z is a sparse raw file, a.raw is a converted to raw, bk/ov a chain with
// compressed and zero clusters.
func cmpSetup(t *testing.T) {
	t.Helper()
	chdirTemp(t)
	mk := func(name, size string, cmds ...string) {
		mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", name, size)
		if len(cmds) > 0 {
			qemuIO(t, "qcow2", name, cmds...)
		}
	}
	mk("a.qcow2", "100M", "write -P 1 0 1M", "write -P 2 50M 64k", "write -z 60M 1M")
	mk("b.qcow2", "100M", "write -P 1 0 1M", "write -P 2 50M 64k", "write -P 3 4000 1")
	mk("c.qcow2", "200M", "write -P 1 0 1M", "write -P 2 50M 64k", "write -P 0 150M 1M")
	mk("c2.qcow2", "200M", "write -P 1 0 1M", "write -P 2 50M 64k", "write -P 9 180M 1000")
	mk("d.qcow2", "100M")
	mk("e.qcow2", "120M", "write -P 0 0 64k", "write -P 5 1700 1", "write -P 0 110M 64k", "write -P 5 115343400 1")
	mustQemu(t, "qemu-img", "convert", "-O", "raw", "a.qcow2", "a.raw")
	mustQemu(t, "qemu-img", "create", "-q", "-f", "raw", "z.raw", "100M")
	mustQemu(t, "qemu-img", "create", "-q", "-f", "raw", "r.raw", "10M")
	qemuIO(t, "raw", "r.raw", "write -P 1 5000 3000", "write -P 2 4M 100k")
	mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", "bk.qcow2", "64M")
	qemuIO(t, "qcow2", "bk.qcow2", "write -P 1 0 100k", "write -c -P 3 1M 4k", "write -z 2M 64k")
	mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "bk.qcow2", "-F", "qcow2", "ov.qcow2")
	qemuIO(t, "qcow2", "ov.qcow2", "write -P 5 10M 8k")
}

// sameAsQemu runs `qemu-img args` and `csi-qcow2 img args` and requires
// the same exit status, stdout and stderr (up to the program name).
func sameAsQemu(t *testing.T, args ...string) {
	t.Helper()
	q := qemu(t, "qemu-img", args...)
	o := cli(t, append([]string{"img"}, args...)...)
	qerr := q.stderr
	if i := strings.Index(qerr, "Try 'qemu-img --help'"); i >= 0 {
		qerr = qerr[:i]
	}
	oerr := strings.ReplaceAll(o.stderr, errPrefix, "qemu-img: ")
	if q.code != o.code || q.stdout != o.stdout || (qerr != oerr && !strings.Contains(qerr, "Could not open")) {
		t.Errorf("%v:\nqemu-img: exit %d\n%s%s\nours: exit %d\n%s%s", args, q.code, q.stdout, q.stderr, o.code, o.stdout, o.stderr)
	}
}

func TestImgCompareMatchesQemu(t *testing.T) {
	needQemu(t)
	cmpSetup(t)
	for _, a := range [][]string{
		{"a.qcow2", "b.qcow2"},
		{"a.qcow2", "a.raw"},
		{"-f", "qcow2", "-F", "raw", "a.qcow2", "a.raw"},
		{"-s", "a.qcow2", "a.raw"},
		{"-s", "a.qcow2", "a.qcow2"},
		{"a.qcow2", "c.qcow2"},
		{"c.qcow2", "a.qcow2"},
		{"-s", "a.qcow2", "c.qcow2"},
		{"a.qcow2", "c2.qcow2"},
		{"c2.qcow2", "a.qcow2"},
		{"d.qcow2", "e.qcow2"},
		{"z.raw", "d.qcow2"},
		{"-s", "z.raw", "d.qcow2"},
		{"-q", "a.qcow2", "b.qcow2"},
		{"ov.qcow2", "ov.qcow2"},
		{"bk.qcow2", "ov.qcow2"},
		{"a.qcow2", "missing.qcow2"},
		{"a.qcow2"},
	} {
		sameAsQemu(t, append([]string{"compare"}, a...)...)
	}
}
