package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// convert -B onto the source's own backing file: the output reads like the
// source and like qemu-img's output, and names the backing file.
func TestConvertBackingMatchesQemu(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	commitFixture(t, dir, "qcow2") // base.qcow2 and top.qcow2 over it
	ours, theirs := twin(t, dir, "base.qcow2", "top.qcow2")
	args := []string{"convert", "-O", "qcow2", "-B", "base.qcow2", "-F", "qcow2"}
	img(t, append(args, filepath.Join(ours, "top.qcow2"), filepath.Join(ours, "out.qcow2"))...)
	mustQemu(t, "qemu-img", append(args, filepath.Join(theirs, "top.qcow2"), filepath.Join(theirs, "out.qcow2"))...)
	for _, d := range []string{ours, theirs} {
		out := filepath.Join(d, "out.qcow2")
		assertCheckClean(t, out)
		assertSameContent(t, out, filepath.Join(dir, "view.raw"))
		in := infoJSON(t, out)
		if in["backing-filename"] != "base.qcow2" || in["backing-filename-format"] != "qcow2" {
			t.Errorf("%s: backing %v (%v)", out, in["backing-filename"], in["backing-filename-format"])
		}
	}
	assertSameContent(t, filepath.Join(ours, "out.qcow2"), filepath.Join(theirs, "out.qcow2"))
	// Only what differs from the backing file is stored: clusters equal to
	// it read through.
	var shared bool
	for _, depth := range mapDepths(t, filepath.Join(ours, "out.qcow2")) {
		shared = shared || depth == 1
	}
	if !shared {
		t.Errorf("convert -B stored every cluster; nothing reads through to the backing file")
	}
}

// convert -B onto an unrelated backing file still keeps the guest view
// (qemu-img would copy only the source's own allocations).
func TestConvertBackingUnrelated(t *testing.T) {
	needQemu(t)
	dir := chdirTemp(t)
	rebaseFixture(t, dir) // old.qcow2, new.qcow2, top.qcow2 over old, view.raw
	img(t, "convert", "-O", "qcow2", "-o", "backing_file=new.qcow2,backing_fmt=qcow2", "top.qcow2", "out.qcow2")
	assertCheckClean(t, "out.qcow2")
	assertSameContent(t, "out.qcow2", "view.raw")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-O", "qcow2", "-B", "new.qcow2"}, "requires explicit backing format"},
		{[]string{"-O", "raw", "-B", "new.qcow2", "-F", "qcow2"}, "Backing file not supported for file format 'raw'"},
		{[]string{"-n", "-O", "qcow2", "-B", "new.qcow2", "-F", "qcow2"}, "-n"},
	} {
		r := cli(t, append(append([]string{"img", "convert"}, tc.args...), "top.qcow2", "x.qcow2")...)
		if r.code != 1 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("convert %v: exit %d, %q; want %q", tc.args, r.code, r.stderr, tc.want)
		}
	}
}

// convert -n writes over an existing output with old content in it.
func TestConvertNoCreateMatchesQemu(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	commitFixture(t, dir, "qcow2")
	for _, format := range []string{"qcow2", "raw"} {
		t.Run(format, func(t *testing.T) {
			target := "target." + format
			mustQemu(t, "qemu-img", "create", "-q", "-f", format, filepath.Join(dir, target), "2M")
			qemuIO(t, format, filepath.Join(dir, target), "write -P 0xee 0 2M")
			ours, theirs := twin(t, dir, "base.qcow2", "top.qcow2", target)
			defer os.RemoveAll(ours)
			defer os.RemoveAll(theirs)
			args := []string{"convert", "-n", "-O", format}
			img(t, append(args, filepath.Join(ours, "top.qcow2"), filepath.Join(ours, target))...)
			mustQemu(t, "qemu-img", append(args, filepath.Join(theirs, "top.qcow2"), filepath.Join(theirs, target))...)
			for _, d := range []string{ours, theirs} {
				if format == "qcow2" {
					assertCheckClean(t, filepath.Join(d, target))
				}
				assertSameContent(t, filepath.Join(d, target), filepath.Join(dir, "view.raw"))
			}
		})
	}
}
