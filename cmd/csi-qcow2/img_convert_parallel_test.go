package main

import (
	"bytes"
	"math/rand/v2"
	"os"
	"strings"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2/convert"
)

// mixedSource writes a 6 MiB raw file of random, text-like and zero
// regions (several copy chunks, with holes) and its qcow2 twin.
func mixedSource(t *testing.T) {
	t.Helper()
	const size = 6 << 20
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, size)
	for off := 0; off < size; off += 256 << 10 {
		switch rng.IntN(4) {
		case 0: // zeros (a hole)
		case 1:
			for i := off; i < off+256<<10; i++ {
				buf[i] = byte(rng.Uint32())
			}
		default:
			for i := off; i < off+256<<10; i++ {
				buf[i] = 'a' + byte(rng.IntN(8))
			}
			// A zero 4k block inside data: sparse detection skips it.
			clear(buf[off+8192 : off+12288])
		}
	}
	f, err := os.Create("mixed.raw")
	if err != nil {
		t.Fatal(err)
	}
	for off := 0; off < size; off += 64 << 10 {
		if blk := buf[off : off+64<<10]; !convert.IsZero(blk) {
			if _, err := f.WriteAt(blk, int64(off)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	mustQemu(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", "mixed.raw", "mixed.qcow2")
}

func sameFile(t *testing.T, a, b string) bool {
	t.Helper()
	x, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Equal(x, y)
}

// TestConvertWorkers: -m 1, -m 8 and -m 8 -W give outputs that read the
// same as the source; with writes in order (no -W) the output files are
// identical byte for byte, compressed ones included.
func TestConvertWorkers(t *testing.T) {
	needQemu(t)
	chdirTemp(t)
	mixedSource(t)
	for _, tc := range []struct {
		name, src string
		args      []string
	}{
		{"raw", "mixed.qcow2", []string{"-O", "raw"}},
		{"qcow2", "mixed.raw", []string{"-f", "raw", "-O", "qcow2", "-o", "cluster_size=16k"}},
		{"zlib", "mixed.qcow2", []string{"-c", "-O", "qcow2"}},
		{"zstd", "mixed.raw", []string{"-c", "-O", "qcow2", "-o", "compression_type=zstd,cluster_size=4k"}},
	} {
		outs := map[string]string{}
		for _, m := range []string{"-m1", "-m8", "-m8W"} {
			out := tc.name + m + ".img"
			args := append([]string{"convert"}, tc.args...)
			args = append(args, "-m", strings.Trim(m[2:], "W"))
			if strings.HasSuffix(m, "W") {
				args = append(args, "-W")
			}
			img(t, append(args, tc.src, out)...)
			mustQemu(t, "qemu-img", "compare", tc.src, out)
			if tc.name != "raw" {
				assertCheckClean(t, out)
			}
			outs[m] = out
		}
		if !sameFile(t, outs["-m1"], outs["-m8"]) {
			t.Errorf("%s: -m 1 and -m 8 wrote different files", tc.name)
		}
	}
	// Sparse detection: the zero 4k blocks inside data and the holes are
	// not written; with -S 64k the zero 4k blocks are.
	img(t, "convert", "-O", "raw", "mixed.qcow2", "s4k.raw")
	img(t, "convert", "-O", "raw", "-S", "64k", "mixed.qcow2", "s64k.raw")
	if a, b := allocatedData(t, "s4k.raw"), allocatedData(t, "s64k.raw"); a >= b {
		t.Errorf("-S 4k output has %d data bytes, -S 64k %d: zero blocks were written", a, b)
	}
	for _, bad := range [][]string{{"-m", "0"}, {"-m", "17"}, {"-t", "unsafe"}} {
		r := cli(t, append(append([]string{"img", "convert"}, bad...), "mixed.qcow2", "x.raw")...)
		if r.code != 1 {
			t.Errorf("convert %v: exit %d, stderr %q", bad, r.code, r.stderr)
		}
	}
}

// TestConvertSnapshot: -l and -s convert an internal snapshot, reading
// the same as qemu-img convert -l of the same snapshot; over a backing
// file too.
func TestConvertSnapshot(t *testing.T) {
	needQemu(t)
	chdirTemp(t)
	mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "base.qcow2", "4M")
	qemuIO(t, "qcow2", "base.qcow2", "write -P 9 0 4M")
	for _, file := range []string{"s.qcow2", "over.qcow2"} {
		args := []string{"create", "-q", "-f", "qcow2", file, "4M"}
		if file == "over.qcow2" {
			args = []string{"create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", file, "4M"}
		}
		mustQemu(t, "qemu-img", args...)
		qemuIO(t, "qcow2", file, "write -P 1 0 1M", "write -z 3M 64k")
		mustQemu(t, "qemu-img", "snapshot", "-c", "one", file)
		qemuIO(t, "qcow2", file, "write -P 2 512k 1M")
		mustQemu(t, "qemu-img", "snapshot", "-c", "two", file)
		qemuIO(t, "qcow2", file, "write -P 3 0 4M")
		for _, tc := range []struct{ flag, param, want string }{
			{"-l", "snapshot.name=one", "one"},
			{"-l", "2", "two"},
			{"-l", "snapshot.id=1,snapshot.name=one", "one"},
			{"-s", "two", "two"},
		} {
			for _, fmtOut := range []string{"raw", "qcow2"} {
				ours, theirs := "ours."+fmtOut, "theirs."+fmtOut
				img(t, "convert", tc.flag, tc.param, "-O", fmtOut, file, ours)
				mustQemu(t, "qemu-img", "convert", "-l", "snapshot.name="+tc.want, "-O", fmtOut, file, theirs)
				if r := qemu(t, "qemu-img", "compare", ours, theirs); r.code != 0 {
					t.Errorf("%s %s %s -O %s: differs from qemu-img convert -l:\n%s", file, tc.flag, tc.param, fmtOut, r.stdout)
				}
				if fmtOut == "qcow2" {
					assertCheckClean(t, ours)
				}
			}
		}
	}
	for _, bad := range [][]string{
		{"-l", "nosuch", "s.qcow2"},
		{"-l", "snapshot.id=1,snapshot.name=two", "s.qcow2"},
		{"-l", "snapshot.foo=1", "s.qcow2"},
		{"-l", "one", "-s", "one", "s.qcow2"},
		{"-l", "one", "-f", "raw", "s.qcow2"},
	} {
		r := cli(t, append(append([]string{"img", "convert"}, bad...), "x.raw")...)
		if r.code != 1 || !strings.HasPrefix(r.stderr, errPrefix) {
			t.Errorf("convert %v: exit %d, stderr %q", bad, r.code, r.stderr)
		}
	}
}

// TestConvertOutputOptions: -O qcow2 -o options reach the output as
// qemu-img info reports them, and the output reads the same as the source.
func TestConvertOutputOptions(t *testing.T) {
	needQemu(t)
	chdirTemp(t)
	mixedSource(t)
	for _, tc := range []struct {
		opts string
		want map[string]any // format-specific data fields
	}{
		{"cluster_size=4k,refcount_bits=8", map[string]any{"refcount-bits": 8.0}},
		{"lazy_refcounts=on", map[string]any{"lazy-refcounts": true}},
		{"compat=0.10", map[string]any{"compat": "0.10"}},
		{"compression_type=zstd", map[string]any{"compression-type": "zstd"}},
		{"preallocation=metadata", nil},
		{"extended_l2=on,cluster_size=128k", map[string]any{"extended-l2": true}},
		{"preallocation=falloc,cluster_size=128k", nil},
	} {
		out := "o-" + strings.NewReplacer(",", "-", "=", "-").Replace(tc.opts) + ".qcow2"
		img(t, "convert", "-O", "qcow2", "-o", tc.opts, "mixed.qcow2", out)
		assertCheckClean(t, out)
		mustQemu(t, "qemu-img", "compare", "mixed.qcow2", out)
		data := infoJSON(t, out)["format-specific"].(map[string]any)["data"].(map[string]any)
		for k, v := range tc.want {
			if data[k] != v {
				t.Errorf("-o %s: %s = %v, want %v", tc.opts, k, data[k], v)
			}
		}
		if strings.Contains(tc.opts, "cluster_size=") {
			cs := map[string]float64{"4k": 4096, "128k": 131072}[strings.Split(strings.SplitAfter(tc.opts, "cluster_size=")[1], ",")[0]]
			if got := infoJSON(t, out)["cluster-size"]; got != cs {
				t.Errorf("-o %s: cluster size %v", tc.opts, got)
			}
		}
	}
}
