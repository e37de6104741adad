package main

import (
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
		{[]string{"-o", "compat=0.10", "v3.qcow2"}, "not supported"},
		{[]string{"-o", "lazy_refcounts=on", "v2.qcow2"}, "compatibility level 1.1"},
	} {
		r := cli(t, append([]string{"img", "amend"}, tc.args...)...)
		if r.code != 1 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("amend %v: exit %d, stderr %q, want %q", tc.args, r.code, r.stderr, tc.want)
		}
	}
	// Same compat as the image has: nothing to do.
	img(t, "amend", "-o", "compat=1.1", "v3.qcow2")
	assertCheckClean(t, "v2.qcow2")
	assertCheckClean(t, "v3.qcow2")
}
