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

// liveWithFaults makes a 1 MiB image and opens it as a Live handle whose
// file is wrap(file, on): faults the test switches with on. With
// everyFile, every file the handle opens (its layers too) is wrapped.
func liveWithFaults(t *testing.T, everyFile bool, wrap func(qcow2.File, *atomic.Bool) qcow2.File) (dir, path string, l *qcow2.Live, on *atomic.Bool) {
	t.Helper()
	dir = t.TempDir()
	path = filepath.Join(dir, "vol.qcow2")
	if err := qcow2.Create(path, qcow2.CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	on = new(atomic.Bool)
	opts := qcow2.WithFileHooks(qcow2.Options{}, func(p string, f qcow2.File) qcow2.File {
		if everyFile || p == path {
			return wrap(f, on)
		}
		return f
	}, nil)
	l, err := qcow2.OpenLive(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	return dir, path, l, on
}

// undoneFreeze runs a Freeze into dir/name that fails once the snapshot
// is linked, switching the faults on there: its undo meets them.
func undoneFreeze(t *testing.T, l *qcow2.Live, dir, name string, on *atomic.Bool) {
	t.Helper()
	qcow2.SetFreezeHook(l, func(step string) error {
		if step == "linked" {
			on.Store(true)
			return errors.New("injected")
		}
		return nil
	})
	t.Logf("freeze: %v", l.Freeze(filepath.Join(dir, name)))
	qcow2.SetFreezeHook(l, nil)
}

// pendingLiveWith is a Live handle with a bitmap and a write whose
// Freeze was undone while wrap's faults were on (the bitmaps' mark
// pending, if the faults hit it).
func pendingLiveWith(t *testing.T, wrap func(qcow2.File, *atomic.Bool) qcow2.File) (dir, path string, l *qcow2.Live, on *atomic.Bool) {
	t.Helper()
	dir, path, l, on = liveWithFaults(t, false, wrap)
	if err := l.WithImage(func(img *qcow2.Image) error { return img.AddBitmap("b", freezeBitmapCluster, false) }); err != nil {
		t.Fatal(err)
	}
	if _, err := l.WriteAt(bytes.Repeat([]byte{1}, 4096), 0); err != nil {
		t.Fatal(err)
	}
	undoneFreeze(t, l, dir, "snap.qcow2", on)
	return dir, path, l, on
}

// An undone Freeze that cannot mark the bitmaps in use again (a write
// error, not sticky) must not leave them stored as consistent while
// guest writes go on: the next write marks them first, and the close
// stores every write.
func TestFreezeUndoneBitmapsMarkFailure(t *testing.T) {
	_, path, l, _ := pendingLiveWith(t, func(f qcow2.File, on *atomic.Bool) qcow2.File { return failOnceFile{f, on} })
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
