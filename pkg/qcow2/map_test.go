package qcow2

import (
	"path/filepath"
	"testing"
)

// TestMapHugeSparseImage maps a 16 TiB image with one 4 KiB write: the walk
// skips whole unallocated L2 ranges, so this is three extents and quick.
func TestMapHugeSparseImage(t *testing.T) {
	p := filepath.Join(t.TempDir(), "a.qcow2")
	if err := Create(p, CreateOptions{Size: 16 << 40}); err != nil {
		t.Fatal(err)
	}
	img, err := Open(p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if _, err := img.WriteAt(make([]byte, 4096), 5<<40); err != nil {
		t.Fatal(err)
	}
	ext, err := img.Map(0, img.Size())
	if err != nil {
		t.Fatal(err)
	}
	if len(ext) != 3 || !ext[1].Data || ext[1].Start != 5<<40 || ext[1].Length != img.ClusterSize() ||
		ext[0].Data || ext[2].Data || ext[2].Start+ext[2].Length != 16<<40 {
		t.Fatalf("extents %+v", ext)
	}
}
