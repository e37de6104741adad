package qcow2_test

import (
	"bytes"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// TestMirrorForgetsChangedMappings reads every cluster (so the data mirror
// learns it) before each operation that changes mappings, then checks
// every 4 KiB read against a model: a mirror word that outlived its
// mapping would read the old host cluster.
func TestMirrorForgetsChangedMappings(t *testing.T) {
	const cs, size = 4096, 1 << 20
	path := filepath.Join(t.TempDir(), "m.qcow2")
	if err := qcow2.Create(path, qcow2.CreateOptions{Size: size, ClusterSize: cs}); err != nil {
		t.Fatal(err)
	}
	img, err := qcow2.Open(path, qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	rng := rand.New(rand.NewPCG(1, 1))
	want := make([]byte, size)
	write := func(off, n int64) {
		b := make([]byte, n)
		fillRandom(rng, b)
		if _, err := img.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
		copy(want[off:], b)
	}
	check := func(what string) {
		t.Helper()
		got := make([]byte, cs)
		for off := int64(0); off < int64(len(want)); off += cs {
			if _, err := img.ReadAt(got, off); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want[off:off+cs]) {
				t.Fatalf("after %s: cluster %d reads stale data", what, off/cs)
			}
		}
	}
	write(0, size)
	check("the first fill")
	if err := img.Discard(8*cs, 8*cs); err != nil {
		t.Fatal(err)
	}
	clear(want[8*cs : 16*cs])
	check("Discard")
	if err := img.WriteZeroes(20*cs, 4*cs, false); err != nil {
		t.Fatal(err)
	}
	clear(want[20*cs : 24*cs])
	check("WriteZeroes")
	snap := bytes.Clone(want)
	if _, err := img.CreateSnapshot("s"); err != nil {
		t.Fatal(err)
	}
	check("CreateSnapshot")
	write(0, 64*cs) // copy-on-write away from the snapshot's clusters
	check("writes over shared clusters")
	if err := img.ApplySnapshot("s"); err != nil {
		t.Fatal(err)
	}
	copy(want, snap)
	check("ApplySnapshot")
	if err := img.DeleteSnapshot("s"); err != nil {
		t.Fatal(err)
	}
	write(100*cs, 3*cs)
	check("DeleteSnapshot and writes")
	if err := img.Resize(size / 2); err == nil {
		t.Fatal("shrinking over allocated clusters succeeded")
	}
	if err := img.Discard(size/2, size/2); err != nil {
		t.Fatal(err)
	}
	if err := img.Resize(size / 2); err != nil {
		t.Fatal(err)
	}
	if err := img.Resize(size); err != nil {
		t.Fatal(err)
	}
	clear(want[size/2:])
	check("shrink and grow")
}
