package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// twin copies every file of dir into two fresh directories, "ours" and
// "qemu", so that one command can run on each copy of the same inputs.
func twin(t *testing.T, dir string, names ...string) (ours, theirs string) {
	t.Helper()
	ours, theirs = filepath.Join(dir, "ours"), filepath.Join(dir, "qemu")
	for _, d := range []string{ours, theirs} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			b, err := os.ReadFile(filepath.Join(dir, n))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(d, n), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return ours, theirs
}

// assertSameContent fails unless qemu-img compare finds a and b identical
// (guest-visible bytes, read through their backing chains).
func assertSameContent(t *testing.T, a, b string) {
	t.Helper()
	if r := qemu(t, "qemu-img", "compare", a, b); r.code != 0 {
		t.Fatalf("qemu-img compare %s %s: exit %d\n%s%s", a, b, r.code, r.stdout, r.stderr)
	}
}

// rebaseFixture builds old.qcow2 and new.qcow2 (different, partly
// overlapping content, new one smaller) and top.qcow2 (4 KiB clusters)
// over old.qcow2 with data, zero and partial writes, and writes a flat
// copy of top's guest view, view.raw, and new.raw (new.qcow2 as raw).
func rebaseFixture(t *testing.T, dir string) {
	t.Helper()
	p := func(n string) string { return filepath.Join(dir, n) }
	mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", p("old.qcow2"), "4M")
	qemuIO(t, "qcow2", p("old.qcow2"), "write -P 1 0 1M", "write -P 2 2M 512k", "write -P 7 3M 64k")
	mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", p("new.qcow2"), "3M")
	qemuIO(t, "qcow2", p("new.qcow2"), "write -P 1 0 512k", "write -P 3 1M 1M", "write -P 2 2M 128k")
	mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4k",
		"-b", "old.qcow2", "-F", "qcow2", p("top.qcow2"))
	qemuIO(t, "qcow2", p("top.qcow2"), "write -P 9 100k 8k", "write -z 200k 64k", "write -P 5 1500k 3k",
		"write -z 2100k 4k")
	mustQemu(t, "qemu-img", "convert", "-O", "raw", p("new.qcow2"), p("new.raw"))
	mustQemu(t, "qemu-img", "convert", "-O", "raw", p("top.qcow2"), p("view.raw"))
}

func TestRebaseSafeMatchesQemu(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	rebaseFixture(t, dir)
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"new", []string{"-b", "new.qcow2", "-F", "qcow2"}},
		{"raw", []string{"-b", "new.raw", "-F", "raw"}},
		{"none", []string{"-b", ""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ours, theirs := twin(t, dir, "old.qcow2", "new.qcow2", "new.raw", "top.qcow2")
			defer os.RemoveAll(ours)
			defer os.RemoveAll(theirs)
			args := append(append([]string{"rebase"}, tc.args...), filepath.Join(ours, "top.qcow2"))
			if out := img(t, args...); out != "" {
				t.Errorf("rebase printed %q", out)
			}
			mustQemu(t, "qemu-img", append(append([]string{"rebase"}, tc.args...), filepath.Join(theirs, "top.qcow2"))...)
			for _, d := range []string{ours, theirs} {
				top := filepath.Join(d, "top.qcow2")
				assertCheckClean(t, top)
				assertSameContent(t, top, filepath.Join(dir, "view.raw"))
				back, _ := infoJSON(t, top)["backing-filename"].(string)
				if back != tc.args[1] {
					t.Errorf("%s: backing file %q, want %q", top, back, tc.args[1])
				}
			}
			assertSameContent(t, filepath.Join(ours, "top.qcow2"), filepath.Join(theirs, "top.qcow2"))
		})
	}
}

func TestRebaseUnsafeMatchesQemu(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	rebaseFixture(t, dir)
	ours, theirs := twin(t, dir, "old.qcow2", "new.qcow2", "top.qcow2")
	img(t, "rebase", "-u", "-b", "new.qcow2", "-F", "qcow2", filepath.Join(ours, "top.qcow2"))
	mustQemu(t, "qemu-img", "rebase", "-u", "-b", "new.qcow2", "-F", "qcow2", filepath.Join(theirs, "top.qcow2"))
	for _, d := range []string{ours, theirs} {
		assertCheckClean(t, filepath.Join(d, "top.qcow2"))
	}
	assertSameContent(t, filepath.Join(ours, "top.qcow2"), filepath.Join(theirs, "top.qcow2"))
	a, b := infoJSON(t, filepath.Join(ours, "top.qcow2")), infoJSON(t, filepath.Join(theirs, "top.qcow2"))
	for _, k := range []string{"backing-filename", "backing-filename-format"} {
		if a[k] != b[k] {
			t.Errorf("%s: ours %v, qemu-img %v", k, a[k], b[k])
		}
	}
	if a["backing-filename"] != "new.qcow2" {
		t.Errorf("backing file %v after unsafe rebase", a["backing-filename"])
	}
	// Unsafe removal of the backing file.
	img(t, "rebase", "-u", "-b", "", filepath.Join(ours, "top.qcow2"))
	if _, ok := infoJSON(t, filepath.Join(ours, "top.qcow2"))["backing-filename"]; ok {
		t.Errorf("backing file still set after -u -b \"\"")
	}
	assertCheckClean(t, filepath.Join(ours, "top.qcow2"))
}

func TestRebaseNeedsBackingFormat(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	rebaseFixture(t, dir)
	top := filepath.Join(dir, "top.qcow2")
	r := cli(t, "img", "rebase", "-b", "new.qcow2", top)
	if r.code != 1 || !strings.Contains(r.stderr, "backing format must be specified") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	if r := cli(t, "img", "rebase", top); r.code != 1 {
		t.Fatalf("rebase without -b: exit %d", r.code)
	}
	if back := infoJSON(t, top)["backing-filename"]; back != "old.qcow2" {
		t.Errorf("backing file changed to %v by a refused rebase", back)
	}
}
