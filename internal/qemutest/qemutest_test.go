package qemutest_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/qemutest"
	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
)

func TestCreateWriteConvert(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	t.Parallel()
	dir := t.TempDir()
	const size = 1 << 20
	base := filepath.Join(dir, "base.raw")
	top := filepath.Join(dir, "top.qcow2")
	ref := filepath.Join(dir, "ref.raw")
	qemutest.CreateRaw(t, base, size)
	qemutest.CreateRaw(t, ref, size)

	baseOps := []qemutest.Op{qemutest.Write(0, size, 0x11)}
	qemutest.QemuIO(t, base, "raw", baseOps...)
	qemutest.ApplyAll(t, mustOpen(t, ref), baseOps...)

	qemutest.CreateImage(t, top, qemutest.ImageOptions{
		ClusterSize: 4096, RefcountBits: 1, LazyRefcounts: true,
		BackingFile: "base.raw", BackingFormat: "raw",
	})
	ops := []qemutest.Op{
		qemutest.Write(1001, 5000, 0xab),
		qemutest.Zero(3, 100),
		qemutest.ZeroUnmap(8192, 4096),
		qemutest.Discard(16384, 8192), // v3 with backing: whole clusters read as zeros
		qemutest.Write(size-7, 7, 0xcd),
	}
	qemutest.QemuIO(t, top, "qcow2", ops...)
	qemutest.ApplyAll(t, mustOpen(t, ref), ops...)

	qemutest.MustCheckClean(t, top, "qcow2")
	qemutest.MustCompare(t, top, "qcow2", ref, "raw")

	got := qemutest.ReadGuest(t, top, "qcow2")
	want, err := os.ReadFile(ref)
	if err != nil {
		t.Fatal(err)
	}
	if d := qemutest.DiffBytes(want, got, 0); d != "" {
		t.Fatal(d)
	}
	out := filepath.Join(dir, "out.raw")
	qemutest.ConvertToRaw(t, top, "", out)
	qemutest.MustFilesEqual(t, ref, out)
	qemutest.MustReaderAtEqual(t, want, mustOpen(t, out), 3000)

	info := qemutest.Info(t, top, "qcow2")
	if info.VirtualSize != size || info.ClusterSize != 4096 || info.BackingFilename != "base.raw" ||
		info.FormatSpecific.Data.RefcountBits != 1 || !info.FormatSpecific.Data.LazyRefcounts || info.FormatSpecific.Data.Compat != "1.1" {
		t.Errorf("info: %+v", info)
	}
	m := qemutest.Map(t, top, "qcow2")
	if len(m) == 0 || m[0].Start != 0 {
		t.Errorf("map: %+v", m)
	}

	// A difference is detected and described.
	qemutest.QemuIO(t, top, "qcow2", qemutest.Write(500000, 1, 0x99))
	if same, msg := qemutest.Compare(t, top, "qcow2", ref, "raw", false); same {
		t.Errorf("compare found no difference: %s", msg)
	}
	out2 := filepath.Join(dir, "out2.raw")
	qemutest.ConvertToRaw(t, top, "qcow2", out2)
	d, err := qemutest.FilesDiff(ref, out2)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(d, "first at offset 500000") {
		t.Errorf("FilesDiff = %q", d)
	}
}

func TestCheckReportsErrors(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	t.Parallel()
	dir := t.TempDir()
	img := filepath.Join(dir, "a.qcow2")
	qemutest.CreateImage(t, img, qemutest.ImageOptions{Size: 1 << 20, ClusterSize: 512, LazyRefcounts: true})
	c := qemutest.MustCheckClean(t, img, "")
	if c.Format != "qcow2" || c.TotalClusters != 2048 {
		t.Errorf("check: %+v", c)
	}
	// With lazy refcounts, a qemu-io that aborts leaves the image dirty
	// with refcounts that do not cover the new clusters.
	qemutest.RunExit(t, "qemu-io", "-c", "write -P 1 0 4096", "-c", "abort", img)
	c = qemutest.Check(t, img, "qcow2", "")
	if c.Clean() || c.ExitCode != 2 || c.Corruptions == 0 {
		t.Errorf("check of an aborted lazy image: %+v", c)
	}
	c = qemutest.Check(t, img, "qcow2", "all")
	if c.CorruptionsFixed == 0 {
		t.Errorf("check -r all: %+v", c)
	}
	qemutest.MustCheckClean(t, img, "qcow2")

	parsed, err := qemutest.ParseCheck([]byte(`{"check-errors":0,"leaks":3,"corruptions":1,"image-end-offset":7168}`))
	if err != nil || parsed.Leaks != 3 || parsed.Corruptions != 1 || parsed.ImageEndOffset != 7168 {
		t.Errorf("ParseCheck = %+v, %v", parsed, err)
	}
}

func TestCreateArgs(t *testing.T) {
	o := qemutest.ImageOptions{Size: 1 << 20, ClusterSize: 512, Compat: "0.10", Preallocation: "metadata", BackingFile: "b", BackingFormat: "raw"}
	got := strings.Join(o.CreateArgs("x.qcow2"), " ")
	want := "create -q -f qcow2 -o cluster_size=512,compat=0.10,preallocation=metadata -b b -F raw x.qcow2 1048576"
	if got != want {
		t.Errorf("CreateArgs = %q, want %q", got, want)
	}
	if s := o.String(); s != "compat0.10-c512-prealloc-metadata" {
		t.Errorf("String = %q", s)
	}
	if d := qemutest.DiffBytes([]byte("abc"), []byte("abc"), 0); d != "" {
		t.Errorf("DiffBytes equal = %q", d)
	}
	if d := qemutest.DiffBytes(bytes.Repeat([]byte{1}, 100), append(bytes.Repeat([]byte{1}, 70), bytes.Repeat([]byte{2}, 30)...), 1000); !strings.Contains(d, "30 bytes differ in [1070, 1099]") {
		t.Errorf("DiffBytes = %q", d)
	}
}

func mustOpen(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func TestSnapshotAndCompressed(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	t.Parallel()
	dir := t.TempDir()
	img := filepath.Join(dir, "s.qcow2")
	qemutest.CreateImage(t, img, qemutest.ImageOptions{Size: 1 << 20, ClusterSize: 4096})
	qemutest.QemuIO(t, img, "qcow2", qemutest.Write(0, 8192, 0x11))
	qemutest.CreateSnapshot(t, img, "s1")
	qemutest.QemuIO(t, img, "qcow2", qemutest.Write(0, 4096, 0x22))
	if info := qemutest.Info(t, img, "qcow2"); len(info.Snapshots) != 1 || info.Snapshots[0].Name != "s1" {
		t.Errorf("snapshots: %+v", info.Snapshots)
	}
	s1 := filepath.Join(dir, "s1.raw")
	qemutest.ConvertSnapshotToRaw(t, img, "s1", s1)
	want := qemutest.Pattern(0, 1<<20)
	copy(want, qemutest.Pattern(0x11, 8192))
	got, err := os.ReadFile(s1)
	if err != nil {
		t.Fatal(err)
	}
	if d := qemutest.DiffBytes(want, got, 0); d != "" {
		t.Fatal(d)
	}
	c := filepath.Join(dir, "c.qcow2")
	qemutest.ConvertCompressed(t, img, "qcow2", c, qemutest.ImageOptions{ClusterSize: 4096, Extra: []string{"compression_type=zstd"}})
	if cr := qemutest.MustCheckClean(t, c, "qcow2"); cr.CompressedClusters == 0 {
		t.Errorf("no compressed clusters: %s", cr.Output)
	}
	if info := qemutest.Info(t, c, "qcow2"); info.FormatSpecific.Data.CompressionType != "zstd" {
		t.Errorf("compression type %q", info.FormatSpecific.Data.CompressionType)
	}
	qemutest.MustCompare(t, img, "qcow2", c, "qcow2")
}
