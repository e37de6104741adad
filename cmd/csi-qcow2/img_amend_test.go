package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

// lazyRefcounts reads lazy-refcounts from qemu-img info.
func lazyRefcounts(t *testing.T, file string) bool {
	t.Helper()
	spec := infoJSON(t, file)["format-specific"].(map[string]any)
	return spec["data"].(map[string]any)["lazy-refcounts"].(bool)
}

func TestAmendLazyRefcounts(t *testing.T) {
	needQemu(t)
	chdirTemp(t)
	mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "a.qcow2", "4M")
	qemuIO(t, "qcow2", "a.qcow2", "write -P 3 0 256k")
	for _, on := range []bool{true, false, true} {
		v := map[bool]string{true: "on", false: "off"}[on]
		if out := img(t, "amend", "-o", "lazy_refcounts="+v, "a.qcow2"); out != "" {
			t.Errorf("amend printed %q", out)
		}
		if got := lazyRefcounts(t, "a.qcow2"); got != on {
			t.Errorf("lazy_refcounts=%s: qemu-img info says %v", v, got)
		}
		assertCheckClean(t, "a.qcow2")
	}
	// A dirty image (lazy refcounts, crashed): turning lazy refcounts off
	// repairs it first.
	qemuIO(t, "qcow2", "a.qcow2", "write -P 4 1M 64k")
	patch(t, "a.qcow2", 79, []byte{1}) // incompatible_features: dirty
	leakFirstCluster(t, "a.qcow2")
	img(t, "amend", "-o", "lazy_refcounts=off", "a.qcow2")
	if lazyRefcounts(t, "a.qcow2") {
		t.Errorf("lazy refcounts still on")
	}
	if d, _ := infoJSON(t, "a.qcow2")["dirty-flag"].(bool); d {
		t.Errorf("dirty flag still set")
	}
	assertCheckClean(t, "a.qcow2")
	qemuIO(t, "qcow2", "a.qcow2", "read -P 4 1M 64k")
}

func TestAmendRefusals(t *testing.T) {
	needQemu(t)
	chdirTemp(t)
	mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", "v2.qcow2", "1M")
	mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "v3.qcow2", "1M")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"v3.qcow2"}, "Must specify options (-o)"},
		{[]string{"-o", "foo=1", "v3.qcow2"}, "Invalid parameter 'foo'"},
		{[]string{"-o", "lazy_refcounts=x", "v3.qcow2"}, "Parameter 'lazy_refcounts' expects 'on' or 'off'"},
		{[]string{"-o", "compat=0.9", "v3.qcow2"}, "Invalid compatibility level: '0.9'"},
		{[]string{"-o", "compat=0.10,lazy_refcounts=on", "v3.qcow2"}, "compatibility level 1.1"},
		{[]string{"-o", "lazy_refcounts=on", "v2.qcow2"}, "compatibility level 1.1"},
	} {
		r := cli(t, append([]string{"img", "amend"}, tc.args...)...)
		found := false
		for _, w := range strings.Split(tc.want, "|") {
			found = found || strings.Contains(r.stderr, w)
		}
		if r.code != 1 || !found {
			t.Errorf("amend %v: exit %d, stderr %q, want %q", tc.args, r.code, r.stderr, tc.want)
		}
	}
	// Same compat as the image has: nothing to do.
	img(t, "amend", "-o", "compat=1.1", "v3.qcow2")
	assertCheckClean(t, "v2.qcow2")
	assertCheckClean(t, "v3.qcow2")
}

// compatOf reads compat from qemu-img info.
func compatOf(t *testing.T, file string) string {
	t.Helper()
	spec := infoJSON(t, file)["format-specific"].(map[string]any)
	return spec["data"].(map[string]any)["compat"].(string)
}

// TestAmendCompat: downgrades and upgrades read the same in qemu-img
// (compare), check clean, and show the new compat; zero clusters of both
// kinds are expanded, with and without a backing file, and a lazy-refcount
// image loses its lazy refcounts. qemu-img's own downgrade of the same
// image reads the same.
func TestAmendCompat(t *testing.T) {
	needQemu(t)
	chdirTemp(t)
	mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "base.qcow2", "4M")
	qemuIO(t, "qcow2", "base.qcow2", "write -P 7 0 4M")
	for _, tc := range []struct{ name, create string }{
		{"plain.qcow2", "-o lazy_refcounts=off"},
		{"lazy.qcow2", "-o lazy_refcounts=on"},
		{"over.qcow2", "-b base.qcow2 -F qcow2"},
	} {
		args := append([]string{"create", "-q", "-f", "qcow2"}, strings.Fields(tc.create)...)
		mustQemu(t, "qemu-img", append(args, tc.name, "4M")...)
		// Data, a preallocated zero cluster (write -z keeps it), plain
		// zero clusters, and a partial zero write.
		qemuIO(t, "qcow2", tc.name, "write -P 1 0 1M", "write -z 64k 128k", "write -z -u 512k 256k",
			"write -z 2M 192k", "write -z 3M 4k")
		copyFile(t, tc.name, "orig-"+tc.name)
		copyFile(t, tc.name, "qemu-"+tc.name)
		img(t, "amend", "-o", "compat=0.10", tc.name)
		mustQemu(t, "qemu-img", "amend", "-o", "compat=0.10", "qemu-"+tc.name)
		assertCheckClean(t, tc.name)
		if c := compatOf(t, tc.name); c != "0.10" {
			t.Errorf("%s: compat %s after downgrade", tc.name, c)
		}
		mustQemu(t, "qemu-img", "compare", "orig-"+tc.name, tc.name)
		mustQemu(t, "qemu-img", "compare", "qemu-"+tc.name, tc.name)

		img(t, "amend", "-o", "compat=1.1", tc.name)
		assertCheckClean(t, tc.name)
		if c := compatOf(t, tc.name); c != "1.1" {
			t.Errorf("%s: compat %s after upgrade", tc.name, c)
		}
		if lazyRefcounts(t, tc.name) {
			t.Errorf("%s: lazy refcounts on after a round trip through 0.10", tc.name)
		}
		mustQemu(t, "qemu-img", "compare", "orig-"+tc.name, tc.name)
		// And v3 features work again.
		img(t, "amend", "-o", "lazy_refcounts=on", tc.name)
		qemuIO(t, "qcow2", tc.name, "write -z 0 64k")
		assertCheckClean(t, tc.name)
	}
	// A v2 image made by qemu-img upgrades like qemu-img's upgrade.
	mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", "-b", "base.qcow2", "-F", "qcow2", "v2.qcow2", "4M")
	qemuIO(t, "qcow2", "v2.qcow2", "write -P 3 1M 100k")
	img(t, "amend", "-o", "compat=v3", "v2.qcow2")
	assertCheckClean(t, "v2.qcow2")
	if c := compatOf(t, "v2.qcow2"); c != "1.1" {
		t.Errorf("v2.qcow2: compat %s after upgrade", c)
	}
	qemuIO(t, "qcow2", "v2.qcow2", "read -P 3 1M 100k", "read -P 7 0 1M")
}

// TestAmendCompatRefusals: what version 2 cannot express is refused with
// a clear error, and the file is left byte for byte as it was.
func TestAmendCompatRefusals(t *testing.T) {
	needQemu(t)
	chdirTemp(t)
	mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "refcount_bits=8", "r8.qcow2", "1M")
	mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "compression_type=zstd", "zstd.qcow2", "1M")
	qemuIO(t, "qcow2", "zstd.qcow2", "write -c -P 1 0 64k")
	mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "extended_l2=on", "ext.qcow2", "1M")
	mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "snapz.qcow2", "1M")
	qemuIO(t, "qcow2", "snapz.qcow2", "write -z 0 64k")
	mustQemu(t, "qemu-img", "snapshot", "-c", "s1", "snapz.qcow2")
	for _, tc := range []struct{ file, want string }{
		{"r8.qcow2", "compat=0.10 requires refcount_bits=16"},
		{"zstd.qcow2", "zstd compression type and existing compressed clusters"},
		// (Refused at open while the engine does not read extended L2.)
		{"ext.qcow2", "0x10|extended L2"},
		{"snapz.qcow2", `internal snapshot "1" holds zero clusters`},
	} {
		before, err := os.ReadFile(tc.file)
		if err != nil {
			t.Fatal(err)
		}
		r := cli(t, "img", "amend", "-o", "compat=0.10", tc.file)
		found := false
		for _, w := range strings.Split(tc.want, "|") {
			found = found || strings.Contains(r.stderr, w)
		}
		if r.code != 1 || !found {
			t.Errorf("%s: exit %d, stderr %q, want %q", tc.file, r.code, r.stderr, tc.want)
		}
		if after, _ := os.ReadFile(tc.file); !bytes.Equal(before, after) {
			t.Errorf("%s: a refused downgrade changed the file", tc.file)
		}
	}
	// zstd without compressed clusters downgrades (to zlib), as in qemu-img.
	mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "compression_type=zstd", "z2.qcow2", "1M")
	qemuIO(t, "qcow2", "z2.qcow2", "write -P 1 0 64k")
	img(t, "amend", "-o", "compat=0.10", "z2.qcow2")
	assertCheckClean(t, "z2.qcow2")
	qemuIO(t, "qcow2", "z2.qcow2", "read -P 1 0 64k")
}
