package golden

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// craftAliased makes a qcow2 image of size bytes (64 KiB clusters) whose
// metadata is hostile but refcount-agnostic:
//   - "data": every L2 entry of every L2 table names the same data
//     cluster (all guest clusters read as that one cluster of 0x77);
//   - "zeromap": every L1 entry names one L2 table whose entries
//     alternate zero-flag / unallocated (the guest reads all zeros, but
//     no two neighbouring clusters map alike).
func craftAliased(t *testing.T, dir string, size int64, mode string) string {
	t.Helper()
	needQemu(t)
	path := filepath.Join(dir, mode+".qcow2")
	run := func(name string, args ...string) {
		if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
	}
	run("qemu-img", "create", "-q", "-f", "qcow2", path, fmt.Sprint(size))
	for off := int64(0); off < size; off += 512 << 20 {
		run("qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P 0x77 %d 64k", off), path)
		if mode != "data" {
			break
		}
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := make([]byte, 104)
	f.ReadAt(h, 0)
	cs := int64(1) << binary.BigEndian.Uint32(h[20:])
	l1n := int64(binary.BigEndian.Uint32(h[36:]))
	l1o := int64(binary.BigEndian.Uint64(h[40:]))
	l1 := make([]byte, 8*l1n)
	f.ReadAt(l1, l1o)
	ent := func(i int64) uint64 { return binary.BigEndian.Uint64(l1[8*i:]) }
	l2 := make([]byte, cs)
	switch mode {
	case "data":
		first := make([]byte, 8)
		f.ReadAt(first, int64(ent(0)&0x00fffffffffffe00))
		for i := int64(0); i < cs; i += 8 {
			copy(l2[i:], first)
		}
		for i := int64(0); i < l1n; i++ {
			if e := ent(i); e != 0 {
				f.WriteAt(l2, int64(e&0x00fffffffffffe00))
			}
		}
	case "zeromap":
		for i := int64(0); i < cs; i += 16 {
			binary.BigEndian.PutUint64(l2[i:], 1) // zero flag; the next entry stays unallocated
		}
		f.WriteAt(l2, int64(ent(0)&0x00fffffffffffe00))
		for i := int64(0); i < l1n; i++ {
			binary.BigEndian.PutUint64(l1[8*i:], ent(0))
		}
		f.WriteAt(l1, l1o)
	}
	return path
}

// TestImportRefusesAliasedClusters: a 768 KiB qcow2 source whose L2
// entries all name one data cluster is published as a 2 GiB image: 2700
// times the bytes fetched, past the 1024x the importer refuses for a
// gzip or zstd stream. The ratio grows with the virtual size (bounded
// only by MaxVirtualSize, 64 TiB) and with the cluster size (2 MiB
// clusters: ~260000x): a small file fills the store's disk.
func TestImportRefusesAliasedClusters(t *testing.T) {
	dir := t.TempDir()
	path := craftAliased(t, dir, 2<<30, "data")
	b := readFile(t, path)
	im := newImporter(t)
	im.FileRoots = []string{dir}
	_, info, err := im.Import(context.Background(), Source{URL: "file://" + path, SHA256: sum(b)})
	t.Logf("fetched %d bytes, published %d bytes on disk, err %v", info.DownloadedBytes, info.AllocatedBytes, err)
	if err == nil && info.AllocatedBytes/max(info.DownloadedBytes, 1) >= maxDataRatio {
		t.Errorf("a %d-byte qcow2 source was published as %d bytes of data (%dx; transport streams are refused past %dx)",
			info.DownloadedBytes, info.AllocatedBytes, info.AllocatedBytes/info.DownloadedBytes, maxDataRatio)
	}
	if err != nil && !errors.Is(err, ErrInvalid) {
		t.Errorf("want ErrInvalid, got %v", err)
	}
}

// TestImportMapMemoryBounded: a 384 KiB qcow2 source of 1 TiB that reads
// as zeros makes the import hold ~3 GiB of heap: convert.Run maps the
// whole disk up front (one qcow2.Extent per cluster here, because zero
// and unallocated clusters alternate), a cost bounded neither by the
// bytes fetched nor by MemoryBudget. At MaxVirtualSize (64 TiB) that is
// ~190 GiB: the node plugin, which serves every volume, is OOM-killed.
func TestImportMapMemoryBounded(t *testing.T) {
	dir := t.TempDir()
	path := craftAliased(t, dir, 1<<40, "zeromap")
	b := readFile(t, path)
	im := newImporter(t)
	im.FileRoots = []string{dir}
	stop := make(chan struct{})
	peak := make(chan uint64, 1)
	go func() {
		var p uint64
		defer func() { peak <- p }()
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			p = max(p, ms.HeapInuse)
		}
	}()
	start := time.Now()
	_, info, err := im.Import(context.Background(), Source{URL: "file://" + path, SHA256: sum(b)})
	close(stop)
	pk := <-peak
	t.Logf("fetched %d bytes, virtual %d, err %v, took %v, peak heap %d MiB", info.DownloadedBytes, info.VirtualSize, err, time.Since(start), pk>>20)
	if limit := uint64(512 << 20); pk > limit {
		t.Errorf("importing a %d-byte image took %d MiB of heap (more than %d MiB)", len(b), pk>>20, limit>>20)
	}
}
