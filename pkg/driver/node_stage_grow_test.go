package driver

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
)

// A restore or a clone into a claim larger than its source is staged with
// its filesystem grown to the claim: Kubernetes sends no NodeExpandVolume
// for it. xfs grows mounted; ext4 too where the plugin has
// CAP_SYS_RESOURCE (the VM test bed), and is mounted at its old size
// where it lacks it (this sandbox), as is a filesystem mounted `ro`. A
// filesystem that fills its device is left as it is.
func TestNodeStageGrowsCopiesIntoLargerClaims(t *testing.T) {
	for _, tc := range []struct {
		name, fs string
		size     int64
		flags    []string
	}{
		{"ext4", "ext4", 64 << 20, nil},
		{"xfs", "xfs", 320 << 20, nil},
		{"xfs-ro", "xfs", 320 << 20, []string{"ro"}},
		{"ext4-ro-combined", "ext4", 64 << 20, []string{"ro,noatime"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.fs == "xfs" {
				testtools.Need(t, "mkfs.xfs", "xfs_growfs")
			}
			grows := tc.flags == nil && (tc.fs == "xfs" || hasCapSysResource(t))
			f := newNodeFixture(t)
			ctx := context.Background()
			c := mountCap(tc.fs, csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
			v, err := f.c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-src",
				CapacityRange: &csi.CapacityRange{RequiredBytes: tc.size}, VolumeCapabilities: []*csi.VolumeCapability{c}})
			must(t, err)
			id := v.Volume.VolumeId
			dir := f.attachAt(t, id, "src", c)
			want := bytes.Repeat([]byte("held by the source "), 1000)
			writeSync(t, filepath.Join(dir, "f"), want)
			syncfs(t, dir)
			srcSize := fsSize(t, dir)
			sn, err := f.c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap", SourceVolumeId: id})
			must(t, err)

			// A read-only mount of a copy is not even tried: the kernel
			// would refuse, so its size alone cannot show that.
			resizes := 0
			resize := resizeMounted
			resizeMounted = func(dev, path string) error { resizes++; return resize(dev, path) }
			t.Cleanup(func() { resizeMounted = resize })
			copyCap := mountCap(tc.fs, csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
			copyCap.GetMount().MountFlags = tc.flags
			const more = 128 << 20
			sources := map[string]*csi.VolumeContentSource{
				"clone":   {Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: id}}},
				"restore": {Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: sn.Snapshot.SnapshotId}}},
			}
			for name, src := range sources {
				r, err := f.c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, VolumeContentSource: src,
					CapacityRange:      &csi.CapacityRange{RequiredBytes: tc.size + more},
					VolumeCapabilities: []*csi.VolumeCapability{copyCap}})
				must(t, err)
				copyID := r.Volume.VolumeId
				target := f.attachAt(t, copyID, name, copyCap)
				switch got := fsSize(t, target); {
				case grows && got < srcSize+more*9/10:
					t.Errorf("%s: %s of %d bytes on a %d-byte claim (the source's: %d)", name, tc.fs, got, tc.size+more, srcSize)
				case !grows && got != srcSize:
					t.Errorf("%s: %s grew from %d to %d bytes where it should stay", name, tc.fs, srcSize, got)
				}
				got, err := os.ReadFile(filepath.Join(target, "f"))
				must(t, err)
				if !bytes.Equal(got, want) {
					t.Errorf("%s does not read the source's file", name)
				}
				before := fsSize(t, target)
				f.detachAt(copyID, name)
				target = f.attachAt(t, copyID, name, copyCap)
				if after := fsSize(t, target); after != before {
					t.Errorf("%s: staged again, %d bytes became %d", name, before, after)
				}
			}
			if tc.flags != nil && resizes > 0 {
				t.Errorf("a filesystem mounted %v was resized %d times", tc.flags, resizes)
			}
			if got := fsSize(t, dir); got != srcSize {
				t.Errorf("the source's filesystem went from %d to %d bytes", srcSize, got)
			}
		})
	}
}

// fsSize is the size of the filesystem mounted at path (statfs).
func fsSize(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Statfs_t
	must(t, unix.Statfs(path, &st))
	return int64(st.Blocks) * st.Bsize
}
