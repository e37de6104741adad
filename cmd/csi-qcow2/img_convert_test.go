package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// allocatedData sums the lengths qemu-img map reports as data.
func allocatedData(t *testing.T, file string) int64 {
	t.Helper()
	var exts []struct {
		Length int64 `json:"length"`
		Data   bool  `json:"data"`
	}
	if err := json.Unmarshal([]byte(mustQemu(t, "qemu-img", "map", "--output=json", file)), &exts); err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, e := range exts {
		if e.Data {
			n += e.Length
		}
	}
	return n
}

func assertIdentical(t *testing.T, a, afmt, b, bfmt string) {
	t.Helper()
	if r := qemu(t, "qemu-img", "compare", "-f", afmt, "-F", bfmt, a, b); r.code != 0 {
		t.Errorf("qemu-img compare %s %s: exit %d\n%s%s", a, b, r.code, r.stdout, r.stderr)
	}
}

// TestConvertChain flattens a QEMU-written chain into qcow2 and raw and
// back, and checks the content with qemu-img compare.
func TestConvertChain(t *testing.T) {
	needQemu(t)
	chdirTemp(t)
	makeChain(t)
	// A written cluster that is mostly zeros: only its non-zero 4k
	// blocks may be written out.
	qemuIO(t, "qcow2", "top.qcow2", "write -P 0 20M 64k", "write -P 0x33 20M 4k")

	if out := img(t, "convert", "-O", "qcow2", "top.qcow2", "flat.qcow2"); out != "" {
		t.Errorf("convert printed %q", out)
	}
	assertCheckClean(t, "flat.qcow2")
	assertIdentical(t, "top.qcow2", "qcow2", "flat.qcow2", "qcow2")
	if fi := infoJSON(t, "flat.qcow2"); fi["backing-filename"] != nil || fi["virtual-size"] != float64(64<<20) {
		t.Errorf("flat.qcow2 info: %v", fi)
	}
	// Data: 128k + 64k (8M) from base, 4k (10M) and 4k of the 20M cluster
	// from top, in whole clusters: at most 5 clusters.
	if n := allocatedData(t, "flat.qcow2"); n > 5*64<<10 {
		t.Errorf("flat.qcow2 has %d bytes of data, want at most %d", n, 5*64<<10)
	}

	img(t, "convert", "-O", "raw", "top.qcow2", "flat.raw")
	assertIdentical(t, "top.qcow2", "qcow2", "flat.raw", "raw")
	if n := allocatedData(t, "flat.raw"); n > 128<<10+64<<10+4<<10+4<<10 {
		t.Errorf("flat.raw has %d bytes of data: zero blocks were written", n)
	}

	img(t, "convert", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4k,compat=0.10", "flat.raw", "back.qcow2")
	assertCheckClean(t, "back.qcow2")
	assertIdentical(t, "top.qcow2", "qcow2", "back.qcow2", "qcow2")

	// The default output format is raw; -S 0 writes every byte.
	img(t, "convert", "-S", "0", "back.qcow2", "full.raw")
	assertIdentical(t, "top.qcow2", "qcow2", "full.raw", "raw")
	if n := allocatedData(t, "full.raw"); n != 64<<20 {
		t.Errorf("-S 0: full.raw has %d bytes of data, want all %d", n, 64<<20)
	}
}

func TestConvertOverwritesAndProgress(t *testing.T) {
	needQemu(t)
	chdirTemp(t)
	mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "src.qcow2", "8M")
	qemuIO(t, "qcow2", "src.qcow2", "write -P 1 1M 1M")
	img(t, "create", "-q", "-f", "qcow2", "dst.qcow2", "1G")
	// -p draws only on a terminal; the test's stdout is a buffer.
	if out := img(t, "convert", "-p", "-O", "qcow2", "src.qcow2", "dst.qcow2"); out != "" {
		t.Errorf("convert -p to a buffer printed %q", out)
	}
	assertIdentical(t, "src.qcow2", "qcow2", "dst.qcow2", "qcow2")
	assertCheckClean(t, "dst.qcow2")
}

func TestConvertErrors(t *testing.T) {
	needQemu(t)
	chdirTemp(t)
	mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "src.qcow2", "1M")
	for _, args := range [][]string{
		{"convert", "nonexistent", "x.raw"},
		{"convert", "src.qcow2", "src.qcow2"},
		{"convert", "-S", "1000", "src.qcow2", "x.raw"},
		{"convert", "-O", "vmdk", "src.qcow2", "x.raw"},
		{"convert", "-O", "qcow2", "-o", "backing_file=src.qcow2", "src.qcow2", "x.qcow2"},
	} {
		if r := cli(t, append([]string{"img"}, args...)...); r.code != 1 || !strings.HasPrefix(r.stderr, errPrefix) {
			t.Errorf("%v: exit %d, stderr %q", args, r.code, r.stderr)
		}
	}
	assertCheckClean(t, "src.qcow2")
}
