package qcow2_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

const freezeBitmapCluster = 64 << 10

// liveWithBitmap creates a 1 MiB image with an enabled bitmap "b" and
// opens it live with cluster 0 written.
func liveWithBitmap(t *testing.T) (dir, path string, l *qcow2.Live) {
	t.Helper()
	dir = t.TempDir()
	path = filepath.Join(dir, "vol.qcow2")
	if err := qcow2.Create(path, qcow2.CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	l, err := qcow2.OpenLive(path, qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.WithImage(func(img *qcow2.Image) error { return img.AddBitmap("b", freezeBitmapCluster, false) }); err != nil {
		t.Fatal(err)
	}
	if _, err := l.WriteAt(bytes.Repeat([]byte{1}, 4096), 0); err != nil {
		t.Fatal(err)
	}
	return dir, path, l
}

// bitmapOf opens a copy of the image bytes read-only and returns bitmap
// b's info and dirty ranges.
func bitmapOf(t *testing.T, data []byte) (qcow2.BitmapInfo, [][2]int64) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "copy.qcow2")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	img, err := qcow2.Open(p, qcow2.Options{ReadOnly: true, NoBacking: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	infos, err := img.Bitmaps()
	if err != nil || len(infos) != 1 {
		t.Fatalf("bitmaps: %v %v", infos, err)
	}
	var dirty [][2]int64
	if !infos[0].InUse {
		if dirty, err = img.BitmapDirty("b"); err != nil {
			t.Fatal(err)
		}
	}
	return infos[0], dirty
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The frozen layer has its bitmaps stored, consistent, before it gets the
// snapshot's name, and is not written after that.
func TestFreezeStoresBitmapsBeforeTheLink(t *testing.T) {
	dir, _, l := liveWithBitmap(t)
	snap := filepath.Join(dir, "snap.qcow2")
	var atLink []byte
	qcow2.SetFreezeHook(l, func(step string) error {
		if step == "linked" {
			atLink = readFile(t, snap)
		}
		return nil
	})
	if err := l.Freeze(snap); err != nil {
		t.Fatal(err)
	}
	info, dirty := bitmapOf(t, atLink)
	if info.InUse || !slices.Equal(dirty, [][2]int64{{0, freezeBitmapCluster}}) {
		t.Fatalf("the frozen layer's bitmap when it was linked: %+v, dirty %v", info, dirty)
	}
	if _, err := l.WriteAt(bytes.Repeat([]byte{2}, 4096), 5*freezeBitmapCluster); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readFile(t, snap), atLink) {
		t.Fatal("the frozen layer changed after it was linked as the snapshot")
	}
}

// A Freeze that is undone leaves the bitmaps tracking the old top: in use
// on disk while the handle writes, and with every write at the close.
func TestFreezeUndoneResumesBitmaps(t *testing.T) {
	dir, path, l := liveWithBitmap(t)
	failed := errors.New("injected")
	qcow2.SetFreezeHook(l, func(step string) error {
		if step == "linked" {
			return failed
		}
		return nil
	})
	if err := l.Freeze(filepath.Join(dir, "snap.qcow2")); !errors.Is(err, failed) {
		t.Fatalf("freeze: %v", err)
	}
	if _, err := l.WriteAt(bytes.Repeat([]byte{3}, 4096), 5*freezeBitmapCluster); err != nil {
		t.Fatal(err)
	}
	if info, _ := bitmapOf(t, readFile(t, path)); !info.InUse {
		t.Fatal("after the undone freeze the bitmap is tracked in memory but not in use on disk: a crash would leave it missing writes")
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	info, dirty := bitmapOf(t, readFile(t, path))
	want := [][2]int64{{0, freezeBitmapCluster}, {5 * freezeBitmapCluster, freezeBitmapCluster}}
	if info.InUse || !slices.Equal(dirty, want) {
		t.Fatalf("bitmap after the close: %+v, dirty %v, want %v", info, dirty, want)
	}
}
