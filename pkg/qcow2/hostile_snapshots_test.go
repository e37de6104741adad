package qcow2

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// sharedL1Snapshots makes an image with cluster size cs and n snapshots
// whose entries all name one L1 table of 4 Mi entries (32 MiB, QEMU's
// limit): zeros in a sparse file. The snapshot table is written here, not
// by taking snapshots.
func sharedL1Snapshots(t *testing.T, cs int64, n int) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "snaps.qcow2")
	if err := Create(p, CreateOptions{Size: 1 << 20, ClusterSize: cs}); err != nil {
		t.Fatal(err)
	}
	const l1At, tableAt = 32 << 20, 64 << 20
	entries := make([]snapshotEntry, n)
	for i := range entries {
		entries[i] = snapshotEntry{L1Offset: l1At, L1Size: maxSnapshotL1Entries,
			ID: fmt.Sprint(i + 1), Name: fmt.Sprintf("s%d", i+1), DiskSize: 1 << 20, ICount: ^uint64(0)}
	}
	table, err := encodeSnapshotTable(entries)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(table, tableAt); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(append(be32(uint32(n)), be64(tableAt)...), hdrOffSnapshots); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestHostileSnapshotsShareOneL1: 65536 snapshots naming one 32 MiB L1
// table. Recording it cluster by cluster for each snapshot was 2^25
// (64 KiB clusters) or 2^32 (512-byte clusters) map writes; now the open
// scans the table without keeping its entries, sees the L1 tables
// overlap and refuses; check reports them and stops instead of reading
// the table 65536 times (2 TiB); a repair changes nothing.
func TestHostileSnapshotsShareOneL1(t *testing.T) {
	for _, cs := range []int64{64 << 10, 512} {
		t.Run(fmt.Sprintf("cluster size %d", cs), func(t *testing.T) {
			p := sharedL1Snapshots(t, cs, maxSnapshots)
			wantRefused(t, tryOpen(p, Options{ReadOnly: true}), ErrInvalid, 4<<20, "snapshot table entries 0 and 1 have overlapping L1 tables")
			wantUnchangedAfterWritableOpen(t, p, Options{}, ErrCorrupt)

			before := digest(t, p)
			for _, mode := range []RepairMode{RepairNone, RepairAll} {
				var res *CheckResult
				err, alloc, took := openCost(func() (err error) {
					res, err = Check(p, CheckOptions{Repair: mode})
					return err
				})
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("check (repair %v) in %v, %.2f MiB allocated: %d corruptions, exit %d, %q",
					mode, took, float64(alloc)/(1<<20), res.Corruptions, res.ExitCode(), res.Messages[len(res.Messages)-2:])
				if res.Corruptions != maxSnapshots-1 || res.ExitCode() != 1 {
					t.Errorf("check: %d corruptions, exit %d; want %d and 1", res.Corruptions, res.ExitCode(), maxSnapshots-1)
				}
				if alloc > 64<<20 {
					t.Errorf("check allocated %d bytes", alloc)
				}
			}
			if digest(t, p) != before {
				t.Error("check -r all changed the image")
			}
		})
	}
}
