package qcow2_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// dirtyImage returns a lazy-refcounts image as a kill leaves it (the
// dirty bit set: its open rebuilds the refcounts) and what it must read.
func dirtyImage(t *testing.T) (path string, want []byte) {
	t.Helper()
	dir := t.TempDir()
	live := filepath.Join(dir, "live.qcow2")
	if err := qcow2.Create(live, qcow2.CreateOptions{Size: 8 << 20, LazyRefcounts: true}); err != nil {
		t.Fatal(err)
	}
	img, err := qcow2.Open(live, qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	want = make([]byte, 8<<20)
	for i := range 32 {
		b := bytes.Repeat([]byte{byte(i + 1)}, 4096)
		off := int64(i) * 256 << 10
		if _, err := img.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
		copy(want[off:], b)
	}
	if err := img.Flush(); err != nil {
		t.Fatal(err)
	}
	killed, err := os.ReadFile(live)
	if err != nil {
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	path = filepath.Join(dir, "killed.qcow2")
	if err := os.WriteFile(path, killed, 0o644); err != nil {
		t.Fatal(err)
	}
	return path, want
}

func TestOpenContextStopsTheRebuild(t *testing.T) {
	path, want := dirtyImage(t)
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var heard []qcow2.Progress
	opts := qcow2.Options{Progress: func(p qcow2.Progress) {
		heard = append(heard, p)
		cancel() // stop at the first unit of work
	}}
	if _, err := qcow2.OpenContext(ctx, path, opts); !errors.Is(err, context.Canceled) {
		t.Fatalf("open with the rebuild cancelled: %v", err)
	}
	if len(heard) != 1 || heard[0].Phase != "mappings" {
		t.Fatalf("progress heard: %+v", heard)
	}
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Fatal("a cancelled rebuild changed the image")
	}
	// The image is still dirty: the next open rebuilds, and all is there.
	var phases = map[string]int64{}
	img, err := qcow2.OpenContext(context.Background(), path, qcow2.Options{Progress: func(p qcow2.Progress) {
		phases[p.Phase] = p.Done
	}})
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(want))
	if _, err := img.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read after the rebuild: %v", err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	if phases["mappings"] == 0 || phases["refcounts"] == 0 {
		t.Fatalf("the rebuild reported %v", phases)
	}
}

func TestCheckContext(t *testing.T) {
	path, _ := dirtyImage(t)
	img, err := qcow2.Open(path, qcow2.Options{}) // repairs it
	if err != nil {
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	var last qcow2.Progress
	res, err := qcow2.CheckContext(context.Background(), path, qcow2.CheckOptions{Progress: func(p qcow2.Progress) {
		if p.Phase == "refcounts" {
			last = p
		}
	}})
	if err != nil || res.Corruptions != 0 {
		t.Fatalf("check: %+v %v", res, err)
	}
	if last.Total == 0 || last.Done != last.Total {
		t.Fatalf("the last refcount progress: %+v", last)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := qcow2.CheckContext(ctx, path, qcow2.CheckOptions{Repair: qcow2.RepairAll}); !errors.Is(err, context.Canceled) {
		t.Fatalf("a cancelled check: %v", err)
	}
}
