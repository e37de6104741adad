package main

import (
	"encoding/json"
	"os"
	"reflect"
	"strings"
	"testing"
)

// createCase is one `create` command line; "FILE" stands for the image.
type createCase struct {
	name string
	args []string
}

var createCases = []createCase{
	{"qcow2-default", []string{"-f", "qcow2", "FILE", "1G"}},
	{"qcow2-options", []string{"-f", "qcow2", "-o", "cluster_size=4k,refcount_bits=8,lazy_refcounts=on", "FILE", "64M"}},
	{"qcow2-v2", []string{"-f", "qcow2", "-o", "compat=0.10", "FILE", "1M"}},
	{"qcow2-v3-explicit", []string{"-f", "qcow2", "-o", "compat=v3", "-o", "refcount_bits=64", "FILE", "1M"}},
	{"qcow2-prealloc-metadata", []string{"-f", "qcow2", "-o", "preallocation=metadata,compat=1.1", "FILE", "3M"}},
	{"qcow2-odd-size", []string{"-f", "qcow2", "FILE", "5000"}},
	{"qcow2-size-option", []string{"-f", "qcow2", "-o", "size=2M,cluster_size=128k", "FILE"}},
	{"qcow2-backing-size", []string{"-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "FILE"}},
	{"qcow2-backing-bigger", []string{"-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "FILE", "2G"}},
	{"qcow2-backing-unsafe", []string{"-f", "qcow2", "-u", "-b", "nonexistent.raw", "-F", "raw", "FILE", "1M"}},
	{"raw", []string{"-f", "raw", "FILE", "10M"}},
	{"raw-default-format", []string{"FILE", "1.5M"}},
	{"raw-full", []string{"-f", "raw", "-o", "preallocation=full", "FILE", "1M"}},
	{"raw-falloc", []string{"-f", "raw", "-o", "preallocation=falloc", "FILE", "1M"}},
}

func withFile(args []string, file string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if a == "FILE" {
			a = file
		}
		out[i] = a
	}
	return out
}

// infoJSON returns qemu-img's view of an image, without the fields that
// differ between two files with the same content.
func infoJSON(t *testing.T, file string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(mustQemu(t, "qemu-img", "info", "--output=json", file)), &m); err != nil {
		t.Fatal(err)
	}
	delete(m, "filename")
	delete(m, "actual-size")
	return m
}

// TestCreateMatchesQemu creates each image with csi-qcow2 and qemu-img and
// compares what they print and what qemu-img info says about the results.
func TestCreateMatchesQemu(t *testing.T) {
	needQemu(t)
	for _, c := range createCases {
		t.Run(c.name, func(t *testing.T) {
			chdirTemp(t)
			mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "base.qcow2", "1G")
			ours := img(t, append([]string{"create"}, withFile(c.args, "ours.img")...)...)
			theirs := mustQemu(t, "qemu-img", append([]string{"create"}, withFile(c.args, "qemu.img")...)...)
			assertSame(t, "create output", strings.ReplaceAll(ours, "ours.img", "X"), strings.ReplaceAll(theirs, "qemu.img", "X"))
			if c.args[0] == "-f" && c.args[1] == "qcow2" && !strings.Contains(strings.Join(c.args, " "), "-u") {
				assertCheckClean(t, "ours.img")
			}
			if got, want := infoJSON(t, "ours.img"), infoJSON(t, "qemu.img"); !reflect.DeepEqual(got, want) {
				t.Errorf("qemu-img info differs:\nours:  %v\nqemu:  %v", got, want)
			}
		})
	}
}

func TestCreateOverwrites(t *testing.T) {
	needQemu(t)
	chdirTemp(t)
	img(t, "create", "-q", "-f", "qcow2", "a.qcow2", "1M")
	img(t, "create", "-q", "-f", "qcow2", "a.qcow2", "2M")
	if got := infoJSON(t, "a.qcow2")["virtual-size"]; got != float64(2<<20) {
		t.Errorf("virtual-size after re-create = %v, want %d", got, 2<<20)
	}
}

// TestCreateErrors compares error messages with qemu-img's (first line,
// with our prefix) and checks the exit status.
func TestCreateErrors(t *testing.T) {
	needQemu(t)
	for _, args := range [][]string{
		{"-f", "qcow2", "FILE"},
		{"-f", "qcow2", "FILE", "1x"},
		{"-f", "qcow2", "FILE", "8E"},
		{"-f", "qcow2", "-o", "cluster_size=3000", "FILE", "1M"},
		{"-f", "qcow2", "-o", "refcount_bits=3", "FILE", "1M"},
		{"-f", "qcow2", "-o", "foo=bar", "FILE", "1M"},
		{"-f", "qcow2", "-o", "compat=0.10,lazy_refcounts=on", "FILE", "1M"},
		{"-f", "qcow2", "-b", "base.qcow2", "FILE"},
		{"-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "-o", "preallocation=metadata", "FILE", "1M"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			chdirTemp(t)
			mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "base.qcow2", "1M")
			r := cli(t, append([]string{"img", "create"}, withFile(args, "x.img")...)...)
			if _, err := os.Stat("x.img"); err == nil {
				t.Errorf("x.img exists after a failed create")
			}
			q := qemu(t, "qemu-img", append([]string{"create"}, withFile(args, "x.img")...)...)
			if r.code != 1 || q.code != 1 {
				t.Fatalf("exit status: ours %d, qemu-img %d; want 1", r.code, q.code)
			}
			want := strings.ReplaceAll(q.stderr, "qemu-img: ", errPrefix)
			if !strings.HasPrefix(want, r.stderr) || r.stderr == "" {
				t.Errorf("stderr:\nours: %q\nqemu: %q", r.stderr, want)
			}
		})
	}
}

func TestCreateOptionHelp(t *testing.T) {
	out := img(t, "create", "-f", "qcow2", "-o", "help", "x")
	if !strings.HasPrefix(out, "Supported options:\n") || !strings.Contains(out, "refcount_bits=<num>") {
		t.Errorf("-o help printed:\n%s", out)
	}
}
