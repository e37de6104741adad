package qcow2_test

import (
	"bytes"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/qemutest"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// CreateSnapshot clears OFLAG_COPIED in every L2 slice that has a cluster
// of the active layer, not only in some: a cluster left flagged would be
// overwritten in place by the next guest write, and the snapshot would
// read the new data. Clusters sit in several slices of one L2 table and
// in several tables, with standard and extended L2 entries; after the
// snapshot every one is rewritten, the snapshot must read the old bytes,
// and both checks must find nothing.
func TestCreateSnapshotClearsCopiedInEverySlice(t *testing.T) {
	for _, opts := range []qcow2.CreateOptions{
		{Size: 2 << 30},
		{Size: 2 << 30, ExtendedL2: true},
		{Size: 256 << 20, ClusterSize: 4096},
	} {
		t.Run(fmt.Sprintf("cluster%d-extl2-%v", opts.ClusterSize, opts.ExtendedL2), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "img.qcow2")
			if err := qcow2.Create(path, opts); err != nil {
				t.Fatal(err)
			}
			img, err := qcow2.Open(path, qcow2.Options{})
			if err != nil {
				t.Fatal(err)
			}
			// One cluster every 200 clusters: every 4 KiB slice of
			// every table holds at least one (a slice maps 512 or 256
			// clusters).
			cs := img.ClusterSize()
			var offs []int64
			for off := int64(0); off < opts.Size; off += 200 * cs {
				offs = append(offs, off)
			}
			for i, off := range offs {
				if _, err := img.WriteAt(bytes.Repeat([]byte{byte(i%250 + 1)}, 512), off); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := img.CreateSnapshot("s"); err != nil {
				t.Fatal(err)
			}
			for _, off := range offs {
				if _, err := img.WriteAt(bytes.Repeat([]byte{0xee}, 512), off); err != nil {
					t.Fatal(err)
				}
			}
			view, err := img.OpenSnapshot("s")
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 512)
			for i, off := range offs {
				if _, err := view.ReadAt(buf, off); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(buf, bytes.Repeat([]byte{byte(i%250 + 1)}, 512)) {
					t.Fatalf("the snapshot reads %#x at %#x: the write after it went in place", buf[0], off)
				}
			}
			checkClean(t, img, path)
			if res := qemutest.Check(t, path, "qcow2", ""); !res.Clean() {
				t.Fatalf("qemu-img check: %+v", res)
			}
		})
	}
}
