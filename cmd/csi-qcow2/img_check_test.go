package main

import (
	"os"
	"strings"
	"testing"
)

// imageWithData makes a 10M qcow2 image holding 128k of data at offset 0.
func imageWithData(t *testing.T, name string) {
	t.Helper()
	mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", name, "10M")
	qemuIO(t, "qcow2", name, "write -P 0x5a 0 128k")
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// compareCheck runs check with args on file with both tools, each on its
// own copy, and compares stdout and the exit status.
func compareCheck(t *testing.T, file string, args ...string) result {
	t.Helper()
	copyFile(t, file, "ours-"+file)
	copyFile(t, file, "qemu-"+file)
	r := cli(t, append(append([]string{"img", "check"}, args...), "ours-"+file)...)
	q := qemu(t, "qemu-img", append(append([]string{"check"}, args...), "qemu-"+file)...)
	if r.code != q.code {
		t.Errorf("check %v: exit %d, qemu-img %d\nours stderr: %s\nqemu stderr: %s", args, r.code, q.code, r.stderr, q.stderr)
	}
	assertSame(t, "check "+strings.Join(args, " "), strings.ReplaceAll(r.stdout, "ours-", ""), strings.ReplaceAll(q.stdout, "qemu-", ""))
	return r
}

func TestCheckClean(t *testing.T) {
	needQemu(t)
	chdirTemp(t)
	imageWithData(t, "clean.qcow2")
	makeChain(t)
	for _, f := range []string{"clean.qcow2", "top.qcow2", "base.qcow2"} {
		compareCheck(t, f)
		compareCheck(t, f, "--output=json")
	}
}

func TestCheckLeaks(t *testing.T) {
	needQemu(t)
	chdirTemp(t)
	imageWithData(t, "leak.qcow2")
	leakFirstCluster(t, "leak.qcow2")
	r := compareCheck(t, "leak.qcow2")
	if r.code != checkExitLeaks {
		t.Errorf("exit %d, want %d", r.code, checkExitLeaks)
	}
	compareCheck(t, "leak.qcow2", "--output=json")
	compareCheck(t, "leak.qcow2", "-r", "leaks")
	compareCheck(t, "leak.qcow2", "-r", "all", "--output=json")
	assertCheckClean(t, "ours-leak.qcow2")
}

func TestCheckCorruption(t *testing.T) {
	needQemu(t)
	chdirTemp(t)
	imageWithData(t, "bad.qcow2")
	unrefFirstCluster(t, "bad.qcow2")
	r := cli(t, "img", "check", "bad.qcow2")
	if r.code != checkExitCorruptions || !strings.Contains(r.stdout, "errors were found on the image.") {
		t.Errorf("exit %d, stdout:\n%s", r.code, r.stdout)
	}
	r = cli(t, "img", "check", "-r", "all", "bad.qcow2")
	if r.code != 0 || !strings.Contains(r.stdout, "The following inconsistencies were found and repaired:") {
		t.Errorf("-r all: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	assertCheckClean(t, "bad.qcow2")
	// The repaired image still holds its data.
	qemuIO(t, "qcow2", "bad.qcow2", "read -P 0x5a 0 128k")
}

func TestCheckRaw(t *testing.T) {
	needQemu(t)
	chdirTemp(t)
	mustQemu(t, "qemu-img", "create", "-q", "-f", "raw", "disk.raw", "1M")
	for _, args := range [][]string{{"disk.raw"}, {"--output=json", "disk.raw"}, {"-f", "raw", "disk.raw"}} {
		r := cli(t, append([]string{"img", "check"}, args...)...)
		q := qemu(t, "qemu-img", append([]string{"check"}, args...)...)
		if r.code != checkExitNoChecks || q.code != checkExitNoChecks {
			t.Errorf("%v: exit %d, qemu-img %d; want %d", args, r.code, q.code, checkExitNoChecks)
		}
		assertSame(t, "stderr", r.stderr, strings.ReplaceAll(q.stderr, "qemu-img: ", errPrefix))
	}
}
