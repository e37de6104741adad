package qcow2_test

import (
	"bytes"
	"errors"
	"path/filepath"
	"slices"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// failOnceFile fails its next WriteAt with EIO once armed.
type failOnceFile struct {
	qcow2.File
	armed *atomic.Bool
}

func (f failOnceFile) WriteAt(p []byte, off int64) (int, error) {
	if f.armed.CompareAndSwap(true, false) {
		return 0, syscall.EIO
	}
	return f.File.WriteAt(p, off)
}

func (f failOnceFile) Unwrap() qcow2.File { return f.File }

// An undone Freeze that cannot mark the bitmaps in use again (a write
// error, not sticky) must not leave them stored as consistent while
// guest writes go on: the next write marks them first, and the close
// stores every write.
func TestFreezeUndoneBitmapsMarkFailure(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "vol.qcow2")
	if err := qcow2.Create(path, qcow2.CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	var armed atomic.Bool
	opts := qcow2.WithFileHooks(qcow2.Options{}, func(p string, f qcow2.File) qcow2.File {
		if p == path {
			return failOnceFile{f, &armed}
		}
		return f
	}, nil)
	l, err := qcow2.OpenLive(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.WithImage(func(img *qcow2.Image) error { return img.AddBitmap("b", freezeBitmapCluster, false) }); err != nil {
		t.Fatal(err)
	}
	if _, err := l.WriteAt(bytes.Repeat([]byte{1}, 4096), 0); err != nil {
		t.Fatal(err)
	}
	failed := errors.New("injected")
	qcow2.SetFreezeHook(l, func(step string) error {
		if step == "linked" {
			armed.Store(true)
			return failed
		}
		return nil
	})
	err = l.Freeze(filepath.Join(dir, "snap.qcow2"))
	t.Logf("freeze: %v", err)
	if _, err := l.WriteAt(bytes.Repeat([]byte{3}, 4096), 5*freezeBitmapCluster); err != nil {
		t.Fatalf("write after the undone freeze: %v", err)
	}
	if err := l.Flush(); err != nil {
		t.Fatal(err)
	}
	crash := readFile(t, path)
	if info, dirty := bitmapOf(t, crash); !info.InUse {
		t.Errorf("crash state: bitmap not in use (consistent) but dirty=%v misses the write at cluster 5", dirty)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	info, dirty := bitmapOf(t, readFile(t, path))
	want := [][2]int64{{0, freezeBitmapCluster}, {5 * freezeBitmapCluster, freezeBitmapCluster}}
	if info.InUse || !slices.Equal(dirty, want) {
		t.Errorf("after close: %+v dirty %v, want %v", info, dirty, want)
	}
}
