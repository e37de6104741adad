package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestImgExtendedL2 covers extended_l2=on across the img commands: create
// (and its refusals), info, amend, map, measure, convert (plain and -c),
// commit and safe rebase of extended L2 chains, each against qemu-img.
func TestImgExtendedL2(t *testing.T) {
	needQemu(t)
	dir := chdirTemp(t)
	for _, a := range []string{
		"create -f qcow2 -o extended_l2=on e.qcow2 4M",
		"create -f qcow2 -o extended_l2=on,cluster_size=16k,preallocation=metadata p.qcow2 1M",
		"create -f qcow2 -o extended_l2=on,cluster_size=8k x.qcow2 1M",
		"create -f qcow2 -o extended_l2=on,compat=0.10 x.qcow2 1M",
		"create -f qcow2 -o extended_l2=maybe x.qcow2 1M",
		"measure --size 10G -O qcow2 -o extended_l2=on",
		"measure --size 1G -O qcow2 -o extended_l2=on,cluster_size=8k",
		"measure --size 1G -O qcow2 -o extended_l2=on,cluster_size=16k,preallocation=full",
	} {
		sameAsQemu(t, strings.Fields(a)...)
	}
	for _, f := range []string{"e.qcow2", "p.qcow2"} {
		assertCheckClean(t, f)
		if !strings.Contains(img(t, "info", f), "extended l2: true") {
			t.Errorf("img info %s does not say extended l2: true", f)
		}
		if infoJSON(t, f)["format-specific"].(map[string]any)["data"].(map[string]any)["extended-l2"] != true {
			t.Errorf("qemu-img info of %s: not extended L2", f)
		}
	}

	img(t, "amend", "-o", "lazy_refcounts=on", "e.qcow2")
	assertCheckClean(t, "e.qcow2")
	if infoJSON(t, "e.qcow2")["format-specific"].(map[string]any)["data"].(map[string]any)["lazy-refcounts"] != true {
		t.Errorf("amend -o lazy_refcounts=on of an extended L2 image did not take")
	}

	// A qemu-made extended chain with subcluster writes, zeroes and
	// discards over a backing file.
	mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=32k", "base.qcow2", "2M")
	qemuIO(t, "qcow2", "base.qcow2", "write -c -P 2 1M 32k", "write -P 1 0 1M", "write -z 64k 1k", "write -P 1 1056k 992k")
	mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=32k",
		"-b", "base.qcow2", "-F", "qcow2", "top.qcow2")
	qemuIO(t, "qcow2", "top.qcow2", "write -P 3 1k 1k", "write -P 4 40000 100", "write -z 100k 2k",
		"discard 200k 1k", "write -P 5 1M 1k", "write -P 6 1500k 64k", "write -z 1600k 3k")
	mustQemu(t, "qemu-img", "convert", "-O", "raw", "top.qcow2", "view.raw")
	sameAsQemu(t, "map", "--output=json", "top.qcow2")
	sameAsQemu(t, "measure", "-O", "qcow2", "-o", "extended_l2=on", "top.qcow2")

	for _, c := range []string{"", "-c"} {
		out := "conv" + c + ".qcow2"
		args := append(strings.Fields("convert "+c), "-O", "qcow2", "-o", "extended_l2=on,cluster_size=16k", "top.qcow2", out)
		img(t, args...)
		assertCheckClean(t, out)
		assertSameContent(t, out, "view.raw")
		if infoJSON(t, out)["format-specific"].(map[string]any)["data"].(map[string]any)["extended-l2"] != true {
			t.Errorf("convert %s -o extended_l2=on made an image without extended L2 entries", c)
		}
	}

	ours, theirs := twin(t, dir, "base.qcow2", "top.qcow2")
	img(t, "commit", filepath.Join(ours, "top.qcow2"))
	mustQemu(t, "qemu-img", "commit", "-q", filepath.Join(theirs, "top.qcow2"))
	for _, d := range []string{ours, theirs} {
		assertCheckClean(t, filepath.Join(d, "base.qcow2"))
		assertCheckClean(t, filepath.Join(d, "top.qcow2"))
		assertSameContent(t, filepath.Join(d, "base.qcow2"), "view.raw")
		assertSameContent(t, filepath.Join(d, "top.qcow2"), "view.raw")
	}

	mustQemu(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=64k", "new.qcow2", "2M")
	qemuIO(t, "qcow2", "new.qcow2", "write -P 9 0 100k", "write -P 8 1M 1k")
	os.RemoveAll(ours)
	os.RemoveAll(theirs)
	ours, theirs = twin(t, dir, "base.qcow2", "new.qcow2", "top.qcow2")
	img(t, "rebase", "-b", "new.qcow2", "-F", "qcow2", filepath.Join(ours, "top.qcow2"))
	mustQemu(t, "qemu-img", "rebase", "-b", "new.qcow2", "-F", "qcow2", filepath.Join(theirs, "top.qcow2"))
	for _, d := range []string{ours, theirs} {
		assertCheckClean(t, filepath.Join(d, "top.qcow2"))
		assertSameContent(t, filepath.Join(d, "top.qcow2"), "view.raw")
	}
	assertSameContent(t, filepath.Join(ours, "top.qcow2"), filepath.Join(theirs, "top.qcow2"))
}
