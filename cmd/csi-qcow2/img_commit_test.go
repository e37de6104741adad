package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// mapDepths returns the depth of every extent qemu-img map reports for file.
func mapDepths(t *testing.T, file string) []float64 {
	t.Helper()
	var ext []map[string]any
	if err := json.Unmarshal([]byte(mustQemu(t, "qemu-img", "map", "--output=json", file)), &ext); err != nil {
		t.Fatal(err)
	}
	var out []float64
	for _, e := range ext {
		out = append(out, e["depth"].(float64))
	}
	return out
}

// commitFixture builds base (qcow2 or raw, 1 MiB, some data) and top.qcow2
// (2 MiB, 4 KiB clusters) over it with data, zero and partial writes, some
// past the end of the base.
func commitFixture(t *testing.T, dir, baseFmt string) string {
	t.Helper()
	p := func(n string) string { return filepath.Join(dir, n) }
	base := "base." + baseFmt
	mustQemu(t, "qemu-img", "create", "-q", "-f", baseFmt, p(base), "1M")
	qemuIO(t, baseFmt, p(base), "write -P 1 0 1M")
	mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4k",
		"-b", base, "-F", baseFmt, p("top.qcow2"), "2M")
	qemuIO(t, "qcow2", p("top.qcow2"), "write -P 9 100k 8k", "write -z 200k 64k", "write -P 5 900k 300k",
		"write -z 1500k 4k", "write -P 6 1999k 1k")
	mustQemu(t, "qemu-img", "convert", "-O", "raw", p("top.qcow2"), p("view.raw"))
	return base
}

func TestCommitMatchesQemu(t *testing.T) {
	needQemu(t)
	for _, baseFmt := range []string{"qcow2", "raw"} {
		t.Run(baseFmt, func(t *testing.T) {
			dir := t.TempDir()
			base := commitFixture(t, dir, baseFmt)
			ours, theirs := twin(t, dir, base, "top.qcow2")
			if out := img(t, "commit", filepath.Join(ours, "top.qcow2")); out != "Image committed.\n" {
				t.Errorf("commit printed %q", out)
			}
			mustQemu(t, "qemu-img", "commit", "-q", filepath.Join(theirs, "top.qcow2"))
			view := filepath.Join(dir, "view.raw")
			for _, d := range []string{ours, theirs} {
				top := filepath.Join(d, "top.qcow2")
				assertCheckClean(t, top)
				if baseFmt == "qcow2" {
					assertCheckClean(t, filepath.Join(d, base))
				}
				assertSameContent(t, top, view)
				if got := virtualSize(t, filepath.Join(d, base)); got != 2<<20 {
					t.Errorf("%s: base is %d bytes, want it grown to the top's 2 MiB", d, got)
				}
				args := []string{"compare", "-f", baseFmt, "-F", "raw", filepath.Join(d, base), view}
				if r := qemu(t, "qemu-img", args...); r.code != 0 {
					t.Errorf("%s: base differs from the committed view: %s%s", d, r.stdout, r.stderr)
				}
				for _, depth := range mapDepths(t, top) {
					if depth == 0 {
						t.Errorf("%s: top still maps clusters after commit", top)
						break
					}
				}
			}
		})
	}
}

func TestCommitDrop(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	commitFixture(t, dir, "qcow2")
	top := filepath.Join(dir, "top.qcow2")
	before, err := os.ReadFile(top)
	if err != nil {
		t.Fatal(err)
	}
	img(t, "commit", "-d", "-b", filepath.Join(dir, "base.qcow2"), top)
	if after, err := os.ReadFile(top); err != nil || !bytes.Equal(after, before) {
		t.Errorf("commit -d changed the top image (%v)", err)
	}
	assertCheckClean(t, top)
	assertCheckClean(t, filepath.Join(dir, "base.qcow2"))
	assertSameContent(t, filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "view.raw"))
}

func TestCommitRefusals(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	commitFixture(t, dir, "qcow2")
	mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", filepath.Join(dir, "x.qcow2"), "1M")
	r := cli(t, "img", "commit", filepath.Join(dir, "x.qcow2"))
	if r.code != 1 || !strings.Contains(r.stderr, "Image does not have a backing file") {
		t.Errorf("commit without backing: exit %d, %q", r.code, r.stderr)
	}
	r = cli(t, "img", "commit", "-b", filepath.Join(dir, "x.qcow2"), filepath.Join(dir, "top.qcow2"))
	if r.code != 1 || !strings.Contains(r.stderr, "immediate backing file") {
		t.Errorf("commit -b elsewhere: exit %d, %q", r.code, r.stderr)
	}
	assertSameContent(t, filepath.Join(dir, "top.qcow2"), filepath.Join(dir, "view.raw"))
}
