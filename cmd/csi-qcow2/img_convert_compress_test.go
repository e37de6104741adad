package main

import (
	"strings"
	"testing"
)

// TestImgConvertCompressed: convert -c writes compressed clusters (zlib
// and zstd) that qemu-img reads back equal to the source and checks clean.
func TestImgConvertCompressed(t *testing.T) {
	needQemu(t)
	cmpSetup(t)
	for _, tc := range []struct{ src, opts string }{
		{"a.qcow2", "cluster_size=4k"},
		{"ov.qcow2", "compression_type=zstd"},
		{"r.raw", "compression_type=zstd,cluster_size=4k"},
		{"c2.qcow2", ""},
	} {
		out := "out-" + strings.ReplaceAll(tc.opts, ",", "-") + "-" + tc.src + ".qcow2"
		args := []string{"convert", "-c", "-O", "qcow2"}
		if tc.opts != "" {
			args = append(args, "-o", tc.opts)
		}
		img(t, append(args, tc.src, out)...)
		assertCheckClean(t, out)
		mustQemu(t, "qemu-img", "compare", tc.src, out)
		info := mustQemu(t, "qemu-img", "info", out)
		if strings.Contains(tc.opts, "zstd") != strings.Contains(info, "compression type: zstd") {
			t.Errorf("%s: compression type not as asked:\n%s", out, info)
		}
		r := qemu(t, "qemu-img", "check", "--output=json", out)
		if !strings.Contains(r.stdout, `"compressed-clusters"`) {
			t.Errorf("%s: no compressed clusters:\n%s", out, r.stdout)
		}
	}
	for _, a := range [][]string{
		{"convert", "-c", "-O", "raw", "a.qcow2", "x.raw"},
		{"convert", "-c", "-O", "qcow2", "-o", "preallocation=full", "a.qcow2", "x.qcow2"},
		{"create", "-f", "qcow2", "-o", "compat=0.10,compression_type=zstd", "v.qcow2", "1M"},
		{"create", "-f", "qcow2", "-o", "compression_type=lz4", "v.qcow2", "1M"},
	} {
		r := cli(t, append([]string{"img"}, a...)...)
		q := qemu(t, "qemu-img", a...)
		if r.code != q.code || !strings.Contains(q.stderr, strings.TrimPrefix(strings.TrimSpace(r.stderr), errPrefix)) {
			t.Errorf("%v: ours exit %d %q, qemu-img exit %d %q", a, r.code, r.stderr, q.code, q.stderr)
		}
	}
	img(t, "create", "-q", "-f", "qcow2", "-o", "compression_type=zstd", "z.qcow2", "1M")
	if info := mustQemu(t, "qemu-img", "info", "z.qcow2"); !strings.Contains(info, "compression type: zstd") {
		t.Errorf("create -o compression_type=zstd:\n%s", info)
	}
}
