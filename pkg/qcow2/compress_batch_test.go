package qcow2

import (
	"bytes"
	"errors"
	"path/filepath"
	"sync"
	"testing"
)

// TestCompressedBatches: batches compressed concurrently and appended
// write what a single WriteCompressedClusters would; a batch is refused by
// another image, after Append across images, and with a cluster twice.
func TestCompressedBatches(t *testing.T) {
	dir := t.TempDir()
	const cs = 4096
	open := func(name string) *Image {
		p := filepath.Join(dir, name)
		if err := Create(p, CreateOptions{Size: 1 << 20, ClusterSize: cs}); err != nil {
			t.Fatal(err)
		}
		img, err := Open(p, Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { img.Close() })
		return img
	}
	a, b := open("a.qcow2"), open("b.qcow2")
	cluster := func(i int) CompressedCluster {
		return CompressedCluster{Off: int64(i) * cs, Data: bytes.Repeat([]byte{byte(i + 1), 'x', 'y'}, cs/3+1)[:cs]}
	}
	batches := make([]*CompressedBatch, 4)
	var wg sync.WaitGroup
	for w := range batches {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var cl []CompressedCluster
			for i := w * 8; i < w*8+8; i++ {
				cl = append(cl, cluster(i))
			}
			var err error
			if batches[w], err = a.CompressClusters(cl); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	all := batches[0]
	for _, o := range batches[1:] {
		if err := all.Append(o); err != nil {
			t.Fatal(err)
		}
	}
	if all.Len() != 32*cs {
		t.Fatalf("Len %d, want %d", all.Len(), 32*cs)
	}
	if err := b.WriteCompressedBatch(all); !errors.Is(err, ErrInvalid) {
		t.Errorf("batch of a written to b: %v", err)
	}
	if err := a.WriteCompressedBatch(all); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, cs)
	for i := range 32 {
		if _, err := a.ReadAt(got, int64(i)*cs); err != nil || !bytes.Equal(got, cluster(i).Data) {
			t.Fatalf("cluster %d reads wrong (%v)", i, err)
		}
	}
	other, err := b.CompressClusters([]CompressedCluster{cluster(40)})
	if err != nil {
		t.Fatal(err)
	}
	mine, err := a.CompressClusters([]CompressedCluster{cluster(41)})
	if err != nil {
		t.Fatal(err)
	}
	if err := mine.Append(other); !errors.Is(err, ErrInvalid) {
		t.Errorf("Append across images: %v", err)
	}
	twice, err := a.CompressClusters([]CompressedCluster{cluster(41)})
	if err != nil {
		t.Fatal(err)
	}
	if err := mine.Append(twice); err != nil {
		t.Fatal(err)
	}
	if err := a.WriteCompressedBatch(mine); !errors.Is(err, ErrInvalid) {
		t.Errorf("a cluster twice in one batch: %v", err)
	}
	if _, err := a.ReadAt(got, 41*cs); err != nil || !bytes.Equal(got, make([]byte, cs)) {
		t.Errorf("a refused batch wrote something (%v)", err)
	}
}
