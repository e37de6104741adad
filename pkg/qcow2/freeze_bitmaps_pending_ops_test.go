package qcow2_test

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// pendingChain is a chain s1 <- s2 <- vol, with a bitmap on vol and a
// pending mark.
func pendingChain(t *testing.T) (dir string, l *qcow2.Live, on *atomic.Bool) {
	dir, _, l, on = liveWithFaults(t, true, func(f qcow2.File, on *atomic.Bool) qcow2.File { return failWhileFile{f, on} })
	t.Cleanup(func() { l.Close() })
	for i, s := range []string{"s1.qcow2", "s2.qcow2"} {
		if _, err := l.WriteAt(bytes.Repeat([]byte{byte(i + 1)}, 4096), int64(i)*freezeBitmapCluster); err != nil {
			t.Fatal(err)
		}
		if err := l.Freeze(filepath.Join(dir, s)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.WithImage(func(img *qcow2.Image) error { return img.AddBitmap("b", freezeBitmapCluster, false) }); err != nil {
		t.Fatal(err)
	}
	if _, err := l.WriteAt(bytes.Repeat([]byte{7}, 4096), 3*freezeBitmapCluster); err != nil {
		t.Fatal(err)
	}
	undoneFreeze(t, l, dir, "s3.qcow2", on)
	return
}

func TestPendingMarkPendingCollapse(t *testing.T) {
	dir, l, on := pendingChain(t)
	on.Store(false)
	dropped, err := l.Collapse(context.Background(), qcow2.CollapseOptions{Base: filepath.Join(dir, "s1.qcow2")})
	if err != nil {
		t.Fatalf("Collapse while pending (disk recovered): %v", err)
	}
	t.Logf("dropped %v", dropped)
	p := make([]byte, 4096)
	if _, err := l.ReadAt(p, freezeBitmapCluster); err != nil || p[0] != 2 {
		t.Fatalf("read %v %d", err, p[0])
	}
}

// Collapse while the mark still fails: refused, nothing changes.
func TestPendingMarkPendingCollapseFailing(t *testing.T) {
	dir, l, _ := pendingChain(t)
	_, err := l.Collapse(context.Background(), qcow2.CollapseOptions{Base: filepath.Join(dir, "s1.qcow2")})
	if err == nil {
		t.Fatal("Collapse while the mark fails succeeded")
	}
	t.Logf("collapse: %v", err)
}

// A bitmap edit while the mark is pending and the disk has recovered
// retries the mark itself, as a write does, and succeeds.
func TestPendingMarkPendingBitmapEdit(t *testing.T) {
	_, _, l, on := pendingLive(t)
	on.Store(false)
	defer l.Close()
	if err := l.WithImage(func(img *qcow2.Image) error { return img.AddBitmap("c", freezeBitmapCluster, false) }); err != nil {
		t.Errorf("AddBitmap while the mark is pending, disk recovered: %v", err)
	}
}

// Snapshot delete/apply while pending.
func TestPendingMarkPendingSnapshotOps(t *testing.T) {
	dir, path, l, on := liveWithFaults(t, false, func(f qcow2.File, on *atomic.Bool) qcow2.File { return failWhileFile{f, on} })
	defer l.Close()
	if err := l.WithImage(func(img *qcow2.Image) error {
		if err := img.AddBitmap("b", freezeBitmapCluster, false); err != nil {
			return err
		}
		_, err := img.CreateSnapshot("a")
		if err != nil {
			return err
		}
		_, err = img.CreateSnapshot("d")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	undoneFreeze(t, l, dir, "snap.qcow2", on)
	// still failing: refused
	if err := l.WithImage(func(img *qcow2.Image) error { return img.DeleteSnapshot("d") }); err == nil {
		t.Fatal("DeleteSnapshot landed while the mark fails")
	}
	on.Store(false)
	if err := l.WithImage(func(img *qcow2.Image) error { return img.DeleteSnapshot("d") }); err != nil {
		t.Errorf("DeleteSnapshot: %v", err)
	}
	if info, _ := bitmapOf(t, readFile(t, path)); !info.InUse {
		t.Errorf("not in use after a snapshot op")
	}
}

// Read-only image: snapshot ops refused with ErrReadOnly, nothing written.
func TestPendingMarkReadOnlySnapshot(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "vol.qcow2")
	if err := qcow2.Create(path, qcow2.CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	img, err := qcow2.Open(path, qcow2.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if _, err := img.CreateSnapshot("x"); !errors.Is(err, qcow2.ErrReadOnly) {
		t.Errorf("CreateSnapshot ro: %v", err)
	}
	if err := img.Resize(2 << 20); !errors.Is(err, qcow2.ErrReadOnly) {
		t.Errorf("Resize ro: %v", err)
	}
}
