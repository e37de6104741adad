package qcow2_test

import (
	"errors"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
	"golang.org/x/sys/unix"
)

// TestFullFilesystemRecovers: the filesystem under the image is full, so
// a write that needs a new host block fails at once with ENOSPC; nothing
// of it was acknowledged, and no writeback was lost. The failure is not
// sticky: Flushes and writes that need no new block go on, and once
// space is freed the same open image takes the failed write, allocates
// and flushes again, keeps every acknowledged write, and checks clean
// (leaks at worst).
//
// "guest data" runs out on a guest write into a reserved cluster (the
// file is sparse there); "reservation" gives the reserved clusters host
// blocks first, so what runs out is the next reservation's durable
// metadata write, whose plain write (sync_guard.go) fails before any sync.
func TestFullFilesystemRecovers(t *testing.T) {
	for _, tc := range []struct {
		name          string
		blocksForPool bool
	}{
		{"guest data", false},
		{"reservation", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := testtools.MountThinFS(t, 64<<20)
			path := thinImage(t, fs, 64<<20, 0)
			img, spy := openSpiedFlushed(t, path)
			defer img.Close()
			size, err := spy.Size()
			if err != nil {
				t.Fatal(err)
			}
			if tc.blocksForPool {
				reserveHostBlocks(t, path, size)
			}

			fs.FillFilesystem()
			acked := int64(1) // the writes acknowledged: clusters [1, acked)
			var werr error
			for ; acked < 512; acked++ {
				if _, werr = img.WriteAt(cluster(acked, 1), acked*thinCluster); werr != nil {
					break
				}
			}
			op, off, ferr := spy.first()
			if !errors.Is(werr, unix.ENOSPC) || errors.Is(werr, qcow2.ErrSyncFailed) || !errors.Is(ferr, unix.ENOSPC) {
				t.Fatalf("a write on the full filesystem: %v (first host failure: %s at %d: %v), want ENOSPC, not sticky", werr, op, off, ferr)
			}
			// Where it ran out: inside the file (a reserved cluster) or
			// past its end (a new reservation).
			if grew := off >= size; grew != tc.blocksForPool {
				t.Fatalf("precondition: the write that ran out is at %d, the file was %d bytes: want it past the end %v", off, size, tc.blocksForPool)
			}
			if err := img.Flush(); err != nil {
				t.Fatalf("Flush after the failed write: %v (not sticky: nothing was lost)", err)
			}
			if _, err := img.WriteAt(cluster(0, 2), 0); err != nil {
				t.Fatalf("an overwrite of an allocated cluster after the failed write: %v", err)
			}

			fs.Free()
			for c := acked; c < acked+32; c++ { // past the pool: a new reservation
				if _, err := img.WriteAt(cluster(c, 1), c*thinCluster); err != nil {
					t.Fatalf("a write once space is free again: %v", err)
				}
			}
			if err := img.Flush(); err != nil {
				t.Fatalf("Flush once space is free again: %v", err)
			}

			ro := closeAndReadBack(t, img, path)
			defer ro.Close()
			requireGuest(t, ro, cluster(0, 2), 0, "the overwrite")
			for c := int64(1); c < acked+32; c++ {
				requireGuest(t, ro, cluster(c, 1), c*thinCluster, "an acknowledged write")
			}
			mustClose(t, ro)
			// Leaks are allowed, as after a crash: the cluster a failed
			// guest write took, and the whole run a failed reservation
			// counted, stay allocated with no owner.
			res := requireCheck(t, path, true)
			t.Logf("leaked clusters: %d", res.Leaks)
		})
	}
}
