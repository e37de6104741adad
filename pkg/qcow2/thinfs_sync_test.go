package qcow2_test

import (
	"errors"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
	"golang.org/x/sys/unix"
)

// TestThinLostWritebackViaDurableWrite: the storage runs out, and the
// flusher's writeback of an acknowledged guest write fails (ENOSPC). The
// next allocation's durable metadata write, pwritev2(RWF_DSYNC), gets
// that ENOSPC from its sync half, which consumes the error for the
// image's descriptor: no fdatasync will report it again. So the failure
// must be sticky there and then (sync_guard.go: the plain write first
// tells a full filesystem from this): the write fails with
// ErrSyncFailed, no later Flush returns nil over the lost guest write,
// and what the last successful Flush covered still reads back once the
// page cache is dropped.
func TestThinLostWritebackViaDurableWrite(t *testing.T) {
	fs := testtools.MountThinFS(t, 64<<20)
	path := thinImage(t, fs, 64<<20, 32<<20)
	img, spy := openSpiedFlushed(t, path)
	defer img.Close()
	flushed := cluster(0, 1)

	fs.Fill()
	if _, err := img.WriteAt(cluster(1, 1), thinCluster); err != nil {
		t.Fatalf("a write after the storage ran out (into the page cache): %v", err)
	}
	if err := testtools.WriteBack(t, path); !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("precondition: the flusher's writeback of the guest write: %v, want ENOSPC", err)
	}
	// Guest writes go on into fresh clusters until the pool runs dry and
	// a reservation writes its refcounts durably. The flusher gets to
	// each before the next arrives, so no dirty page is left for a later
	// fdatasync to fail on: the durable write's report is the only one.
	var werr error
	for c := int64(2); c < 256 && werr == nil; c++ {
		_ = testtools.WriteBack(t, path)
		_, werr = img.WriteAt(cluster(c, 1), c*thinCluster)
	}
	if op, off, err := spy.first(); op != "durable" || !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("precondition: the first host call to fail is %s at %d (%v), want a durable write failing with ENOSPC", op, off, err)
	}
	for range 3 {
		if err := img.Flush(); err == nil {
			testtools.DropCache(t, path)
			got := make([]byte, thinCluster)
			_, rerr := img.ReadAt(got, thinCluster)
			t.Fatalf("a Flush returned nil after the lost writeback; the guest write it covers now reads %#x... (%v), was %#x...", got[:4], rerr, cluster(1, 1)[:4])
		}
	}
	requireSyncFailed(t, werr, "the write whose durable metadata write met the lost writeback")
	requireSyncFailed(t, img.Flush(), "a Flush after the lost writeback")
	if _, err := img.WriteAt(cluster(0, 2), 0); !errors.Is(err, qcow2.ErrSyncFailed) {
		t.Fatalf("a write after the lost writeback: %v, want ErrSyncFailed", err)
	}

	testtools.DropCache(t, path)
	requireGuest(t, img, flushed, 0, "flushed before the storage ran out, read from the disk")
	requireSyncFailed(t, img.Close(), "Close after the lost writeback")
	testtools.DropCache(t, path)
	ro, err := qcow2.Open(path, qcow2.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	requireGuest(t, ro, flushed, 0, "flushed before the storage ran out, after a reopen")
	mustClose(t, ro)
	requireCheck(t, path, true) // a failed sync may leak, never corrupt
}

// TestThinOverlappingFlushes: two Flushes (an NBD flush and a FUA write,
// say) overlap a writeback that loses a guest write both cover. Linux
// reports the ENOSPC to one fdatasync of the descriptor only; the other,
// had it reached the kernel while the first was returning, would get 0.
// The first sync is held right after the kernel answered it, until the
// second Flush waits for it (inside Flush) or has synced: neither may
// return nil.
func TestThinOverlappingFlushes(t *testing.T) {
	fs := testtools.MountThinFS(t, 64<<20)
	path := thinImage(t, fs, 64<<20, 32<<20)
	img, spy := openSpiedFlushed(t, path)
	defer img.Close()

	fs.Fill()
	// A guest write into a cluster of the pool: it needs no reservation,
	// so nothing syncs before the two Flushes.
	if _, err := img.WriteAt(cluster(1, 1), thinCluster); err != nil {
		t.Fatal(err)
	}
	held := spy.holdNextSync()
	defer spy.releaseHeld()
	flushes := make(chan error, 2)
	go func() { flushes <- img.Flush() }()
	if err := testtools.Within(t, "the first Flush's fdatasync", held); !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("precondition: the first Flush's fdatasync: %v, want ENOSPC", err)
	}
	go func() { flushes <- img.Flush() }()
	testtools.WaitFor(t, "the second Flush to wait for the first or to sync", func() bool {
		return spy.synced.Load() > 0 || parkedInFlush()
	})
	spy.releaseHeld()
	for range 2 {
		requireSyncFailed(t, testtools.Within(t, "a Flush", flushes), "one of two Flushes overlapping the lost writeback")
	}
}
