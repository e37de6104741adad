package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
)

// result is what one command run printed and returned.
type result struct {
	stdout, stderr string
	code           int
}

// cli runs `csi-qcow2 args...` in-process.
func cli(t *testing.T, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return result{out.String(), errb.String(), code}
}

// img runs `csi-qcow2 img args...` and fails the test unless it exits 0.
func img(t *testing.T, args ...string) string {
	t.Helper()
	r := cli(t, append([]string{"img"}, args...)...)
	if r.code != 0 {
		t.Fatalf("img %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// needQemu skips (or, in CI, fails) the test without qemu-img and qemu-io.
func needQemu(t *testing.T) {
	t.Helper()
	testtools.Need(t, "qemu-img", "qemu-io")
}

// qemu runs an external program (qemu-img, qemu-io) and returns its result.
func qemu(t *testing.T, prog string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := exec.Command(prog, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s: %v", prog, err)
	}
	return result{out.String(), errb.String(), code}
}

// mustQemu runs qemu-img or qemu-io and fails the test unless it exits 0.
func mustQemu(t *testing.T, prog string, args ...string) string {
	t.Helper()
	r := qemu(t, prog, args...)
	if r.code != 0 {
		t.Fatalf("%s %s: exit %d\n%s%s", prog, strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// qemuIO runs qemu-io commands (-c) on an image of format fmt.
func qemuIO(t *testing.T, fmt, file string, cmds ...string) {
	t.Helper()
	args := []string{"-f", fmt}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out := mustQemu(t, "qemu-io", append(args, file)...)
	if strings.Contains(out, "error") || strings.Contains(out, "failed") {
		t.Fatalf("qemu-io %v: %s", cmds, out)
	}
}

// assertCheckClean runs the real qemu-img check on file.
func assertCheckClean(t *testing.T, file string) {
	t.Helper()
	if r := qemu(t, "qemu-img", "check", file); r.code != 0 {
		t.Fatalf("qemu-img check %s: exit %d\n%s%s", file, r.code, r.stdout, r.stderr)
	}
}

// assertSame compares two outputs line by line.
func assertSame(t *testing.T, what, got, want string) {
	t.Helper()
	if got != want {
		t.Errorf("%s differs from qemu-img:\n--- ours\n%s\n--- qemu-img\n%s", what, got, want)
	}
}

// chdirTemp moves the test into a fresh directory and returns it, so that
// relative file names (and what qemu-img prints for them) are exercised.
func chdirTemp(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	t.Chdir(dir)
	return dir
}

// qcow2Fields reads the header fields the corruption helpers need.
type qcow2Fields struct {
	clusterSize      int64
	l1Offset         int64
	refTableOffset   int64
	refcountBits     int
	firstL2Entry     int64 // file offset of L2 entry 0 of L1 entry 0
	firstDataCluster int64 // host offset that L2 entry maps
}

func readQcow2Fields(t *testing.T, path string) qcow2Fields {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	be := binary.BigEndian
	const mask = 0x00fffffffffffe00
	f := qcow2Fields{
		clusterSize:    1 << be.Uint32(b[20:]),
		l1Offset:       int64(be.Uint64(b[40:])),
		refTableOffset: int64(be.Uint64(b[48:])),
		refcountBits:   16,
	}
	if be.Uint32(b[4:]) == 3 {
		f.refcountBits = 1 << be.Uint32(b[96:])
	}
	l2 := int64(be.Uint64(b[f.l1Offset:]) & mask)
	if l2 == 0 {
		t.Fatalf("%s: L1 entry 0 is unallocated", path)
	}
	f.firstL2Entry = l2
	f.firstDataCluster = int64(be.Uint64(b[l2:]) & mask)
	return f
}

// leakFirstCluster clears L2 entry 0 so that the data cluster it mapped is
// still counted but no longer referenced: one leaked cluster.
func leakFirstCluster(t *testing.T, path string) {
	t.Helper()
	f := readQcow2Fields(t, path)
	patch(t, path, f.firstL2Entry, make([]byte, 8))
}

// unrefFirstCluster sets the refcount of the first data cluster to zero
// while L2 still maps it: a corruption.
func unrefFirstCluster(t *testing.T, path string) {
	t.Helper()
	f := readQcow2Fields(t, path)
	if f.refcountBits != 16 {
		t.Fatalf("unrefFirstCluster needs 16-bit refcounts")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block := int64(binary.BigEndian.Uint64(b[f.refTableOffset:]) &^ 0x1ff)
	patch(t, path, block+2*(f.firstDataCluster/f.clusterSize), []byte{0, 0})
}

func patch(t *testing.T, path string, off int64, p []byte) {
	t.Helper()
	fh, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	if _, err := fh.WriteAt(p, off); err != nil {
		t.Fatal(err)
	}
}
