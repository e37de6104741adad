package qcow2

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
)

// tableLayer makes path a 64 KiB-cluster image naming backing (if not
// empty) whose header claims an L1 table of l1Entries and a refcount table
// of rtClusters clusters: all zeros in a sparse file, so that a chain of
// such layers costs no disk and little time, only the memory an open
// gives their tables.
func tableLayer(t *testing.T, path, backing string, l1Entries, rtClusters uint32) {
	t.Helper()
	if err := Create(path, CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	raw := make([]byte, 1<<16)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(raw, 0); err != nil {
		t.Fatal(err)
	}
	h, err := parseHeader(raw)
	if err != nil {
		t.Fatal(err)
	}
	const rtAt, l1At = 16 << 20, 32 << 20 // room for 8 MiB and 32 MiB
	h.RefcountTableOffset, h.RefcountTableClusters = rtAt, rtClusters
	h.L1TableOffset, h.L1Size = l1At, l1Entries
	if backing != "" {
		h.BackingFile, h.BackingFormat = backing, "qcow2"
	}
	buf, err := h.encode()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(l1At + int64(l1Entries)*8); err != nil {
		t.Fatal(err)
	}
}

// tableChain makes dir/m0.qcow2 (a small ordinary image, the top) over n
// table layers dir/m1.qcow2 ... dir/m<n>.qcow2, and returns the top's path.
func tableChain(t *testing.T, dir string, n int, l1Entries, rtClusters uint32) string {
	t.Helper()
	for i := n; i >= 1; i-- {
		backing := ""
		if i < n {
			backing = fmt.Sprintf("m%d.qcow2", i+1)
		}
		tableLayer(t, filepath.Join(dir, fmt.Sprintf("m%d.qcow2", i)), backing, l1Entries, rtClusters)
	}
	top := filepath.Join(dir, "m0.qcow2")
	if err := Create(top, CreateOptions{Size: 1 << 20, BackingFile: "m1.qcow2", BackingFormat: "qcow2", Unsafe: true}); err != nil {
		t.Fatal(err)
	}
	return top
}

// refusedLayer returns the number of the layer an ErrLimit names.
func refusedLayer(t *testing.T, err error) int {
	t.Helper()
	m := regexp.MustCompile(`opening \S*/m(\d+)\.qcow2 needs`).FindStringSubmatch(err.Error())
	if m == nil {
		t.Fatalf("the error names no layer: %v", err)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// TestHostileChainOverDefaultBudget: layers whose headers claim tables at
// QEMU's limits (32 MiB L1, 8 MiB refcount table: about 360 MiB each with
// their overlap map) cannot add up: the second one is refused before any
// of its tables, or the top's, is allocated, and a writable open refused
// that way has not written (the dirty top is not rebuilt first).
func TestHostileChainOverDefaultBudget(t *testing.T) {
	top := tableChain(t, t.TempDir(), 6, maxL1Bytes/8, maxRefcountTableBytes>>16)
	err := wantRefused(t, tryOpen(top, Options{ReadOnly: true}), ErrLimit, 4<<20, "over its memory budget of 512.0 MiB", "L1 tables 32.0 MiB")
	if n := refusedLayer(t, err); n != 2 {
		t.Errorf("refused at layer %d, want 2", n)
	}
	wantUnchangedAfterWritableOpen(t, top, Options{}, ErrLimit)
}

// TestHostileChainOverBudgetSummed: the budget is for the whole chain.
// Layers that are small one by one (L1 512 KiB, refcount table 128 KiB:
// about 6 MiB each) exceed a 64 MiB budget together, and the open stays
// within the budget until it is refused; without a bound the chain opens.
func TestHostileChainOverBudgetSummed(t *testing.T) {
	const budget = 64 << 20
	top := tableChain(t, t.TempDir(), 16, 64<<10, 2)
	err := wantRefused(t, tryOpen(top, Options{ReadOnly: true, MemoryBudget: budget}), ErrLimit, budget, "over its memory budget of 64.0 MiB")
	if n := refusedLayer(t, err); n < 8 || n > 11 {
		t.Errorf("refused at layer %d, want the one that brings the sum past 64 MiB (8..11)", n)
	}
	img, err := Open(top, Options{ReadOnly: true, MemoryBudget: -1})
	if err != nil {
		t.Fatalf("no budget: %v", err)
	}
	img.Close()
}

// TestDefaultMemoryBudgetFitsLargeImages: the default budget holds a
// 64 TiB disk at 64 KiB clusters many times over, and one image with
// tables at QEMU's limits.
func TestDefaultMemoryBudgetFitsLargeImages(t *testing.T) {
	big := &Header{Version: 3, ClusterBits: 16, Size: 64 << 40, RefcountOrder: 4,
		L1Size: 64 << 40 >> 29, RefcountTableClusters: 4}
	c := estimateLayerCost(big, Options{})
	t.Logf("64 TiB at 64 KiB clusters: %s (%s)", fmtMiB(c.sum()), c)
	if c.sum()*20 > DefaultMemoryBudget {
		t.Errorf("a 64 TiB image costs %s: fewer than 20 fit the default budget", fmtMiB(c.sum()))
	}
	limits := &Header{Version: 3, ClusterBits: 16, Size: 1 << 40, RefcountOrder: 4,
		L1Size: maxL1Bytes / 8, RefcountTableClusters: maxRefcountTableBytes >> 16}
	c = estimateLayerCost(limits, Options{})
	t.Logf("tables at QEMU's limits: %s (%s)", fmtMiB(c.sum()), c)
	if c.sum() > DefaultMemoryBudget {
		t.Errorf("an image at QEMU's table limits costs %s, over the default budget", fmtMiB(c.sum()))
	}
}
