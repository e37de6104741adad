package main

import (
	"os"
	"strings"
	"testing"
)

func virtualSize(t *testing.T, file string) int64 {
	t.Helper()
	return int64(infoJSON(t, file)["virtual-size"].(float64))
}

func TestResizeQcow2(t *testing.T) {
	needQemu(t)
	chdirTemp(t)
	mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "a.qcow2", "1M")
	qemuIO(t, "qcow2", "a.qcow2", "write -P 3 0 64k")
	steps := []struct {
		args []string
		want int64
	}{
		{[]string{"+1M"}, 2 << 20},
		{[]string{"3M"}, 3 << 20},
		{[]string{"--shrink", "-512k"}, 2560 << 10},
		{[]string{"--shrink", "1M"}, 1 << 20},
		{[]string{"-f", "qcow2", "+1G"}, 1<<30 + 1<<20},
	}
	for _, s := range steps {
		args := append(append([]string{"resize"}, s.args[:len(s.args)-1]...), "a.qcow2", s.args[len(s.args)-1])
		if out := img(t, args...); out != "Image resized.\n" {
			t.Errorf("%v printed %q", args, out)
		}
		if got := virtualSize(t, "a.qcow2"); got != s.want {
			t.Errorf("%v: virtual size %d, want %d", args, got, s.want)
		}
		assertCheckClean(t, "a.qcow2")
	}
	qemuIO(t, "qcow2", "a.qcow2", "read -P 3 0 64k", "read -P 0 64k 1M")
}

func TestResizeShrinkNeedsFlag(t *testing.T) {
	needQemu(t)
	chdirTemp(t)
	mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "a.qcow2", "2M")
	r := cli(t, "img", "resize", "a.qcow2", "1M")
	q := qemu(t, "qemu-img", "resize", "a.qcow2", "1M")
	if r.code != 1 || q.code != 1 {
		t.Fatalf("exit %d, qemu-img %d; want 1", r.code, q.code)
	}
	assertSame(t, "stderr", r.stderr, strings.ReplaceAll(q.stderr, "qemu-img: ", errPrefix))
	if got := virtualSize(t, "a.qcow2"); got != 2<<20 {
		t.Errorf("virtual size %d after a refused shrink", got)
	}
}

// The engine shrinks only over an unallocated tail (qemu-img discards the
// data); a refused shrink must leave the image intact.
func TestResizeShrinkOverData(t *testing.T) {
	needQemu(t)
	chdirTemp(t)
	mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "a.qcow2", "2M")
	qemuIO(t, "qcow2", "a.qcow2", "write -P 4 1536k 64k")
	if r := cli(t, "img", "resize", "--shrink", "a.qcow2", "1M"); r.code != 1 || !strings.HasPrefix(r.stderr, errPrefix) {
		t.Errorf("exit %d, stderr %q", r.code, r.stderr)
	}
	if got := virtualSize(t, "a.qcow2"); got != 2<<20 {
		t.Errorf("virtual size %d", got)
	}
	assertCheckClean(t, "a.qcow2")
	qemuIO(t, "qcow2", "a.qcow2", "read -P 4 1536k 64k")
}

func TestResizeRaw(t *testing.T) {
	needQemu(t)
	chdirTemp(t)
	img(t, "create", "-q", "-f", "raw", "a.raw", "1M")
	img(t, "resize", "a.raw", "+1M")
	img(t, "resize", "-f", "raw", "--shrink", "a.raw", "-1536k")
	st, err := os.Stat("a.raw")
	if err != nil || st.Size() != 512<<10 {
		t.Fatalf("a.raw: %v, %v; want 512 KiB", st, err)
	}
	if r := cli(t, "img", "resize", "a.raw", "--", "-1M"); r.code != 1 {
		t.Errorf("resize to a negative size: exit %d", r.code)
	}
}

func TestResizeArgs(t *testing.T) {
	chdirTemp(t)
	for _, args := range [][]string{{"img", "resize"}, {"img", "resize", "x"}, {"img", "resize", "a", "b", "1M"}, {"img", "resize", "x", "1x"}} {
		if r := cli(t, args...); r.code != 1 || !strings.HasPrefix(r.stderr, errPrefix) {
			t.Errorf("%v: exit %d, stderr %q", args, r.code, r.stderr)
		}
	}
	if r := cli(t, "img", "resize", "--help"); r.code != 0 || !strings.Contains(r.stdout, "--shrink") {
		t.Errorf("resize --help: exit %d, stdout %q", r.code, r.stdout)
	}
}
