package qcow2_test

import (
	"bytes"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// failWhileFile fails every WriteAt while on is set.
type failWhileFile struct {
	qcow2.File
	on *atomic.Bool
}

func (f failWhileFile) WriteAt(p []byte, off int64) (int, error) {
	if f.on.Load() {
		return 0, syscall.EIO
	}
	return f.File.WriteAt(p, off)
}
func (f failWhileFile) Unwrap() qcow2.File { return f.File }

// pendingLive is pendingLiveWith failWhileFile.
func pendingLive(t *testing.T) (dir, path string, l *qcow2.Live, on *atomic.Bool) {
	return pendingLiveWith(t, func(f qcow2.File, on *atomic.Bool) qcow2.File { return failWhileFile{f, on} })
}

// Mark keeps failing: every guest write path is refused, concurrently,
// nothing lands; Close then stores the bitmap consistent and exact.
func TestPendingBitmapMarkPersistentFailure(t *testing.T) {
	_, path, l, on := pendingLive(t)
	var wg sync.WaitGroup
	var landed atomic.Int32
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			off := int64(2+i%6) * freezeBitmapCluster
			var err error
			switch i % 3 {
			case 0:
				_, err = l.WriteAt(bytes.Repeat([]byte{9}, 4096), off)
			case 1:
				err = l.WriteZeroes(off, freezeBitmapCluster, false)
			case 2:
				err = l.Discard(off, freezeBitmapCluster)
			}
			if err == nil {
				landed.Add(1)
			}
		}(i)
	}
	wg.Wait()
	if n := landed.Load(); n != 0 {
		t.Fatalf("%d writes landed while the mark fails", n)
	}
	info, dirty := bitmapOf(t, readFile(t, path))
	if info.InUse || !slices.Equal(dirty, [][2]int64{{0, freezeBitmapCluster}}) {
		t.Errorf("on disk while pending: %+v %v", info, dirty)
	}
	on.Store(false)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	info, dirty = bitmapOf(t, readFile(t, path))
	if info.InUse || !slices.Equal(dirty, [][2]int64{{0, freezeBitmapCluster}}) {
		t.Errorf("after close: %+v %v", info, dirty)
	}
}

// Transient failure, idle guest: management operations should work once
// the disk does (or retry the mark themselves).
func TestPendingBitmapMarkRetriedByOperations(t *testing.T) {
	dir, _, l, on := pendingLive(t)
	on.Store(false)
	defer l.Close()
	if err := l.Resize(2 << 20); err != nil {
		t.Errorf("Resize after transient failure, no guest write yet: %v", err)
	}
	if err := l.WithImage(func(img *qcow2.Image) error { _, err := img.CreateSnapshot("s"); return err }); err != nil {
		t.Errorf("CreateSnapshot: %v", err)
	}
	if err := l.Freeze(filepath.Join(dir, "snap2.qcow2")); err != nil {
		t.Errorf("Freeze retry: %v", err)
	}
}

// Mark retried concurrently by many writers once the disk recovers.
func TestPendingBitmapMarkConcurrentRecovery(t *testing.T) {
	_, path, l, on := pendingLive(t)
	on.Store(false)
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			off := int64(2+i%6) * freezeBitmapCluster
			if _, err := l.WriteAt(bytes.Repeat([]byte{9}, 4096), off); err != nil {
				t.Error(err)
			}
		}(i)
	}
	wg.Wait()
	if err := l.Flush(); err != nil {
		t.Fatal(err)
	}
	if info, _ := bitmapOf(t, readFile(t, path)); !info.InUse {
		t.Errorf("crash state: not in use after writes")
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	_, dirty := bitmapOf(t, readFile(t, path))
	want := [][2]int64{{0, freezeBitmapCluster}, {2 * freezeBitmapCluster, 6 * freezeBitmapCluster}}
	if !slices.Equal(dirty, want) {
		t.Errorf("after close: %v want %v", dirty, want)
	}
}

type failSyncFile struct {
	qcow2.File
	on *atomic.Bool
}

func (f failSyncFile) Sync() error {
	if f.on.CompareAndSwap(true, false) {
		return syscall.EIO
	}
	return f.File.Sync()
}
func (f failSyncFile) Unwrap() qcow2.File { return f.File }

// The mark's fdatasync fails: sticky; writes refused; Close fails and the
// file's bitmap is either in use or exact.
func TestPendingBitmapMarkSyncFailure(t *testing.T) {
	_, path, l, _ := pendingLiveWith(t, func(f qcow2.File, on *atomic.Bool) qcow2.File { return failSyncFile{f, on} })
	for i := 0; i < 3; i++ {
		if _, err := l.WriteAt(bytes.Repeat([]byte{9}, 4096), 3*freezeBitmapCluster); err == nil {
			t.Fatal("write landed after a sticky sync failure")
		} else if i == 0 {
			t.Logf("write: %v", err)
		}
	}
	t.Logf("close: %v", l.Close())
	info, dirty := bitmapOf(t, readFile(t, path))
	t.Logf("on disk: %+v %v", info, dirty)
	if !info.InUse && !slices.Equal(dirty, [][2]int64{{0, freezeBitmapCluster}}) {
		t.Errorf("consistent but wrong: %v", dirty)
	}
}
