package qcow2_test

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// TestDiscardWhileSetCompat: Discard decides between a no-op (version 2
// with a backing file) and zeroing by the image's version, which SetCompat
// rewrites under the image lock. Under -race, reading it without the lock
// is reported (issue 9, item 8); without -race the test checks that both
// calls finish with an outcome each allows.
func TestDiscardWhileSetCompat(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "base.raw"), make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "top.qcow2")
	if err := qcow2.Create(path, qcow2.CreateOptions{ClusterSize: 4096, BackingFile: "base.raw", BackingFormat: "raw"}); err != nil {
		t.Fatal(err)
	}
	img, err := qcow2.Open(path, qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if _, err := img.WriteAt(make([]byte, 64<<10), 0); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range 200 {
			err := img.Discard(int64(i%16)*4096, 4096)
			if err != nil && !errors.Is(err, qcow2.ErrReadOnly) {
				t.Errorf("Discard: %v", err)
				return
			}
		}
	}()
	if err := img.SetCompat("0.10"); err != nil {
		t.Errorf("SetCompat: %v", err)
	}
	wg.Wait()
}
