package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
)

// dirtyMap returns nbdinfo's map of a bitmap as qemu-nbd exports it.
func dirtyMap(t *testing.T, file, bitmap string) string {
	t.Helper()
	testtools.Need(t, "qemu-nbd", "nbdinfo")
	sock := filepath.Join(t.TempDir(), "s")
	srv := exec.Command("qemu-nbd", "-r", "-f", "qcow2", "-B", bitmap, "--socket="+sock, file)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	var out string
	testtools.WaitFor(t, "qemu-nbd to serve bitmap "+bitmap+" of "+file, func() bool {
		r := qemu(t, "nbdinfo", "--map=qemu:dirty-bitmap:"+bitmap, "nbd+unix:///?socket="+sock)
		out = r.stdout
		return r.code == 0
	})
	return out
}

// TestBitmapMatchesQemu runs the same `bitmap` operations with img and
// qemu-img on twin images and compares info, check and the bitmaps' bits.
func TestBitmapMatchesQemu(t *testing.T) {
	needQemu(t)
	chdirTemp(t)
	for _, f := range []string{"ours.qcow2", "theirs.qcow2"} {
		mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", f, "64M")
	}
	steps := [][]string{
		{"--add", "a"},
		{"--add", "-g", "1M", "--disable", "b"},
		{"write", "write -P 1 1M 4k", "write -P 2 20M 64k"},
		{"--merge", "a", "b"},
		{"--add", "--disable", "c"},
		{"--enable", "c"},
		{"write", "write -P 3 30M 512"},
		{"--disable", "a"},
		{"write", "write -P 4 40M 4k"},
		{"--clear", "b"},
		{"--add", "-g", "512", "--remove", "d"},
		{"--remove", "c"},
	}
	for _, s := range steps {
		for _, f := range []string{"ours.qcow2", "theirs.qcow2"} {
			switch {
			case s[0] == "write":
				qemuIO(t, "qcow2", f, s[1:]...)
			case f == "ours.qcow2":
				args := append([]string{"bitmap"}, s[:len(s)-1]...)
				img(t, append(args, f, s[len(s)-1])...)
			default:
				args := append([]string{"bitmap"}, s[:len(s)-1]...)
				mustQemu(t, "qemu-img", append(args, f, s[len(s)-1])...)
			}
		}
		what := strings.Join(s, " ")
		ours, theirs := mustQemu(t, "qemu-img", "info", "--output=json", "ours.qcow2"), mustQemu(t, "qemu-img", "info", "--output=json", "theirs.qcow2")
		assertSame(t, what+": bitmaps", bitmapsPart(ours), bitmapsPart(theirs))
		assertCheckClean(t, "ours.qcow2")
		if s[0] != "write" && s[0] != "--merge" && s[0] != "--clear" {
			continue // the bits only change with these (nbd reads are slow)
		}
		for _, b := range []string{"a", "b", "c"} {
			if !strings.Contains(bitmapsPart(theirs), `"name": "`+b+`"`) {
				continue
			}
			assertSame(t, what+": bitmap "+b, dirtyMap(t, "ours.qcow2", b), dirtyMap(t, "theirs.qcow2", b))
		}
	}
	// The human layout too (but for the disk size: allocation differs).
	noDiskSize := func(s string) string {
		var keep []string
		for _, l := range strings.Split(s, "\n") {
			if !strings.HasPrefix(l, "disk size:") {
				keep = append(keep, l)
			}
		}
		return strings.Join(keep, "\n")
	}
	assertSame(t, "info", noDiskSize(img(t, "info", "ours.qcow2")),
		noDiskSize(strings.ReplaceAll(mustQemu(t, "qemu-img", "info", "theirs.qcow2"), "theirs", "ours")))

	for _, bad := range [][]string{
		{"bitmap", "--add", "ours.qcow2", "a"},                // exists
		{"bitmap", "--remove", "ours.qcow2", "zz"},            // missing
		{"bitmap", "--clear", "ours.qcow2", "zz"},             // missing
		{"bitmap", "--add", "-g", "1000", "ours.qcow2", "x"},  // not a power of two
		{"bitmap", "-g", "64k", "--clear", "ours.qcow2", "a"}, // -g without --add
		{"bitmap", "ours.qcow2", "a"},                         // no operation
		{"bitmap", "--merge", "a", "-b", "other.qcow2", "ours.qcow2", "b"},
	} {
		if r := cli(t, append([]string{"img"}, bad...)...); r.code != 1 || !strings.HasPrefix(r.stderr, errPrefix) {
			t.Errorf("%v: exit %d, stderr %q", bad, r.code, r.stderr)
		}
	}
	assertCheckClean(t, "ours.qcow2")
}

// bitmapsPart cuts the "bitmaps" list out of qemu-img info's JSON.
func bitmapsPart(info string) string {
	_, after, ok := strings.Cut(info, `"bitmaps": [`)
	if !ok {
		return ""
	}
	part, _, _ := strings.Cut(after, "\n            ]")
	return part
}
