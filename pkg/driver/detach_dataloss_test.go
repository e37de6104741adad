package driver

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Staging fails because mkfs met a full store (its fsync got ENOSPC).
// stage() then detaches; the error mkfs already saw is no write-back
// failure of Detach's, and the volume is released: once space is back,
// DeleteVolume succeeds with nothing staged.
func TestFailedStageReleasesTheVolume(t *testing.T) {
	ctx := context.Background()
	c := mountCap("ext4", csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	fs, f, id := thinStoreVolume(t, "pvc-leak", c)
	staging := filepath.Join(f.dir, "staging")
	must(t, os.MkdirAll(staging, 0o750))

	// A stand-in mkfs.ext4 that writes through the page cache and
	// fsyncs while the store is full (as the real one would), so it
	// fails; the store has space again before it exits.
	bin := t.TempDir()
	ready, gofifo := filepath.Join(bin, "ready"), filepath.Join(bin, "go")
	must(t, unix.Mkfifo(ready, 0o600))
	must(t, unix.Mkfifo(gofifo, 0o600))
	script := "#!/bin/sh\nfor a; do dev=$a; done\necho > " + ready + "\nread x < " + gofifo +
		"\ndd if=/dev/zero of=$dev bs=1M count=4 seek=32 conv=fsync\necho > " + ready + "\nread x < " + gofifo + "\nexit 1\n"
	must(t, os.WriteFile(filepath.Join(bin, "mkfs.ext4"), []byte(script), 0o755))
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))

	staged := make(chan error, 1)
	go func() { staged <- f.stage(id, staging, c) }()
	step := func() { must(t, os.WriteFile(gofifo, []byte("\n"), 0)) }
	wait := func() { _, err := os.ReadFile(ready); must(t, err) }
	wait()
	fs.FillFilesystem()
	step()
	wait()
	fs.Free()
	step()
	err := <-staged
	t.Logf("stage: %v", err)
	if err == nil {
		t.Fatal("stage succeeded")
	}
	if n := f.d.node.count(); n != 0 {
		t.Fatalf("%d volumes staged after a failed stage", n)
	}
	if _, err := f.c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Fatalf("DeleteVolume after a failed stage, nothing staged: %v", err)
	}
}

// A pod wrote through the block device's page cache without syncing and
// exited, and the store is full when the volume is unstaged: the
// write-back fails and the bytes are lost. NodeUnstageVolume answers
// DATA_LOSS, yet the volume is detached and released: the retry finds
// nothing staged and, with space back, the volume deletes.
func TestUnstageAnswersDataLossForLostUnsyncedWrites(t *testing.T) {
	ctx := context.Background()
	c := blockCap()
	fs, f, id := thinStoreVolume(t, "pvc-lost", c)
	target := f.attachAt(t, id, "lost", c)

	pod, err := os.OpenFile(target, os.O_RDWR, 0)
	must(t, err)
	buf := make([]byte, 4<<20)
	for i := range buf {
		buf[i] = 0x77
	}
	_, err = pod.WriteAt(buf, 32<<20) // buffered, never synced
	must(t, err)
	must(t, pod.Close())
	f.unpublish(id, filepath.Join(f.dir, "lost", "target"))
	fs.FillFilesystem()

	req := &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: filepath.Join(f.dir, "lost", "staging")}
	if _, err := f.n.NodeUnstageVolume(ctx, req); status.Code(err) != codes.DataLoss {
		t.Fatalf("NodeUnstageVolume with 4 MiB of unsynced writes and a full store: %v, want DataLoss", err)
	}
	if _, err := f.n.NodeUnstageVolume(ctx, req); err != nil {
		t.Fatalf("the retry: %v", err)
	}
	fs.Free()
	if _, err := f.c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Fatalf("DeleteVolume after the unstage: %v", err)
	}
}
