package driver

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// NodeUnpublishVolume removes its target_path when nothing is mounted
// there: a path in the state directory (here the volume's own record) is
// refused, never removed.
func TestUnpublishNeverRemovesStoreFiles(t *testing.T) {
	d, _ := startDriver(t, Config{})
	ctx := context.Background()
	st, _ := d.store()
	v, err := controllerServer{d: d}.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-1",
		VolumeCapabilities: []*csi.VolumeCapability{mountCap("ext4", csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)}})
	if err != nil {
		t.Fatal(err)
	}
	rec := filepath.Join(st.Root(), "volumes", v.Volume.VolumeId+".json")
	if _, err := (nodeServer{d: d}).NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.Volume.VolumeId, TargetPath: rec}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("unpublish of a store file: %v, want InvalidArgument", err)
	}
	if _, err := os.Stat(rec); err != nil {
		t.Errorf("the volume's record is gone: %v", err)
	}
}
