package qcow2_test

import (
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// TestThinReopenAfterFailedSync: a write that needs a new L2 table fails
// its writeback (the Flush reports it: sticky), the image is closed, the
// storage recovers, and the image is opened again in the same boot. The
// failed writeback left the new L2 table's page cached, clean, holding an
// entry the disk does not have: an open that read it would write in
// place through it, and its Flush would succeed over a mapping that
// vanishes with the page (memory pressure, or a power failure). The
// writable open drops such pages (image.go, FADV_DONTNEED), so the write
// after the reopen is mapped anew and reads back once the cache is gone.
func TestThinReopenAfterFailedSync(t *testing.T) {
	fs := testtools.MountThinFS(t, 64<<20)
	path := thinImage(t, fs, 1<<30, 32<<20)
	// Reserve clusters while there is space: their refcounts are durable.
	img := openFlushed(t, path, qcow2.Options{})

	fs.Fill()
	const far = 600 << 20 // under a second L2 table, taken from the pool
	if _, err := img.WriteAt(cluster(far/thinCluster, 1), far); err != nil {
		t.Fatalf("precondition: the write needing a new L2 table, from the pool: %v", err)
	}
	requireSyncFailed(t, img.Flush(), "precondition: the Flush of the new L2 table")
	requireSyncFailed(t, img.Close(), "precondition: Close after the failed Flush")

	fs.Free()
	img, err := qcow2.Open(path, qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	after := cluster(far/thinCluster, 2)
	if _, err := img.WriteAt(after, far); err != nil {
		t.Fatal(err)
	}
	if err := img.Flush(); err != nil {
		t.Fatalf("Flush after the reopen, with the storage back: %v", err)
	}

	ro := closeAndReadBack(t, img, path)
	defer ro.Close()
	requireGuest(t, ro, after, far, "flushed after the reopen, read once the cache is dropped")
	requireGuest(t, ro, cluster(0, 1), 0, "flushed before the storage ran out")
	mustClose(t, ro)
	requireCheck(t, path, true) // a failed sync may leak, never corrupt
}
