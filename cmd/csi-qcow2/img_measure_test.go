package main

import (
	"strings"
	"testing"
)

func TestImgMeasureMatchesQemu(t *testing.T) {
	needQemu(t)
	cmpSetup(t)
	mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "bm.qcow2", "100M")
	mustQemu(t, "qemu-img", "bitmap", "--add", "bm.qcow2", "b0")
	mustQemu(t, "qemu-img", "bitmap", "--add", "-g", "512", "--disable", "bm.qcow2", "a-longer-name")
	for _, a := range []string{
		"-O qcow2 bm.qcow2",
		"-O qcow2 -o cluster_size=512 --output=json bm.qcow2",
		"-O qcow2 -o compat=0.10 bm.qcow2",
		"a.qcow2",
		"--output=json a.qcow2",
		"-O qcow2 a.qcow2",
		"-O qcow2 --output=json a.qcow2",
		"-O qcow2 -o compat=0.10 a.qcow2",
		"-O qcow2 -o backing_file=x,backing_fmt=raw a.qcow2",
		"--size 1G",
		"--size 1G -O qcow2 --output=json",
		"--size 10G -o cluster_size=4k,refcount_bits=64 -O qcow2",
		"--size 1G -o preallocation=full -O qcow2",
		"--size 1G -o preallocation=metadata -O qcow2",
		"--size 100G -o cluster_size=512 -O qcow2",
		"--size 100P -O qcow2 -o cluster_size=512",
		"--size 1000 -O qcow2",
		"--size 1000",
		"--size 1G -O qcow2 -o foo=bar",
		"--size 1G -O qcow2 -o cluster_size=3k",
		"--size 1G -O vmdk",
		"-O qcow2 a.raw",
		"-O qcow2 -o cluster_size=4k r.raw",
		"-O qcow2 -o cluster_size=2M r.raw",
		"-O qcow2 r.raw",
		"-O qcow2 -o cluster_size=512 bk.qcow2",
		"-O qcow2 -o cluster_size=4k bk.qcow2",
		"-O qcow2 ov.qcow2",
		"-O qcow2 -o refcount_bits=1,cluster_size=1k ov.qcow2",
		"-O qcow2 --output=json -o refcount_bits=1,cluster_size=1k ov.qcow2",
		"--size 7E -O qcow2 -o cluster_size=2M",
		"--output=xml --size 1",
		"",
		"--size 1G a.qcow2",
	} {
		sameAsQemu(t, append([]string{"measure"}, strings.Fields(a)...)...)
	}
}
