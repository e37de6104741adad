package driver

import (
	"context"
	"crypto/sha256"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// storeState is every file under the state directory with a hash of its
// bytes: a refused request must leave it as it was.
func storeState(t *testing.T, root string) map[string][32]byte {
	t.Helper()
	out := map[string][32]byte{}
	err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		out[p] = sha256.Sum256(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func mountCap(fs string, mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fs}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
	}
}

// Each bad request gets the code the CSI spec names and a message that
// names the problem, and changes nothing stored.
func TestBadInputIsRefusedAndChangesNothing(t *testing.T) {
	d, _ := startDriver(t, Config{})
	c := controllerServer{d: d}
	ctx := context.Background()
	st, _ := d.store()
	vol, err := c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-ok", VolumeCapabilities: []*csi.VolumeCapability{blockCap()},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 4 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	volID := vol.GetVolume().GetVolumeId()
	long := strings.Repeat("x", 129)
	swr := csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
	create := func(mod func(r *csi.CreateVolumeRequest)) func() error {
		return func() error {
			r := &csi.CreateVolumeRequest{Name: "pvc-bad", VolumeCapabilities: []*csi.VolumeCapability{blockCap()},
				CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20}}
			mod(r)
			_, err := c.CreateVolume(ctx, r)
			return err
		}
	}
	fromSnap := func(id string) func(r *csi.CreateVolumeRequest) {
		return func(r *csi.CreateVolumeRequest) {
			r.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: id}}}
		}
	}
	cases := []struct {
		name string
		call func() error
		code codes.Code
		msg  string
	}{
		{"no name", create(func(r *csi.CreateVolumeRequest) { r.Name = "" }), codes.InvalidArgument, "name is missing"},
		{"name over 128 bytes", create(func(r *csi.CreateVolumeRequest) { r.Name = long }), codes.InvalidArgument, "129 bytes"},
		{"unknown parameter", create(func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"pool": "a"} }), codes.InvalidArgument, `unknown parameter "pool"`},
		{"image without checksum", create(func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"imageURL": "http://127.0.0.1/x"} }), codes.InvalidArgument, "imageSHA256"},
		{"checksum not hex", create(func(r *csi.CreateVolumeRequest) {
			r.Parameters = map[string]string{"imageURL": "http://127.0.0.1/x", "imageSHA256": "../../etc/passwd"}
		}), codes.InvalidArgument, "64 lowercase hex"},
		{"checksum without image", create(func(r *csi.CreateVolumeRequest) {
			r.Parameters = map[string]string{"imageSHA256": strings.Repeat("a", 64)}
		}), codes.InvalidArgument, "imageURL"},
		{"negative size", create(func(r *csi.CreateVolumeRequest) { r.CapacityRange = &csi.CapacityRange{RequiredBytes: -1} }), codes.InvalidArgument, "negative"},
		{"required over limit", create(func(r *csi.CreateVolumeRequest) {
			r.CapacityRange = &csi.CapacityRange{RequiredBytes: 2 << 20, LimitBytes: 1 << 20}
		}), codes.InvalidArgument, "more than limit_bytes"},
		{"no sector fits", create(func(r *csi.CreateVolumeRequest) {
			r.CapacityRange = &csi.CapacityRange{RequiredBytes: 1000, LimitBytes: 1010}
		}), codes.OutOfRange, "512-byte"},
		{"too large", create(func(r *csi.CreateVolumeRequest) { r.CapacityRange = &csi.CapacityRange{RequiredBytes: 1 << 62} }), codes.OutOfRange, "largest volume"},
		{"no capabilities", create(func(r *csi.CreateVolumeRequest) { r.VolumeCapabilities = nil }), codes.InvalidArgument, "volume_capabilities are missing"},
		{"multi-node access", create(func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities = []*csi.VolumeCapability{mountCap("ext4", csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)}
		}), codes.InvalidArgument, "one node's disk"},
		{"unsupported filesystem", create(func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities = []*csi.VolumeCapability{mountCap("ntfs", swr)}
		}), codes.InvalidArgument, `"ntfs"`},
		{"no access type", create(func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities = []*csi.VolumeCapability{{AccessMode: &csi.VolumeCapability_AccessMode{Mode: swr}}}
		}), codes.InvalidArgument, "access type"},
		{"snapshot ID with traversal", create(fromSnap("../../volumes/x")), codes.NotFound, "not a csi-qcow2 snapshot ID"},
		{"snapshot ID of another node", create(fromSnap("s-0123456789abcdef0123456789abcdef@node-2")), codes.ResourceExhausted, "node-2"},
		{"volume ID as snapshot", create(fromSnap(volID)), codes.NotFound, "not a csi-qcow2 snapshot ID"},
		{"unknown snapshot", create(fromSnap(st.SnapshotID("none"))), codes.NotFound, "snapshot"},
		{"clone of another node's volume", create(func(r *csi.CreateVolumeRequest) {
			r.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: "v-0123456789abcdef0123456789abcdef@node-2"}}}
		}), codes.ResourceExhausted, "node-2"},
		{"snapshot type", func() error {
			_, err := c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap", SourceVolumeId: volID, Parameters: map[string]string{"type": "reflink"}})
			return err
		}, codes.InvalidArgument, `"reflink"`},
		{"snapshot of a path", func() error {
			_, err := c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap", SourceVolumeId: "/etc/passwd"})
			return err
		}, codes.NotFound, "not a csi-qcow2 volume ID"},
		{"snapshot name over 128 bytes", func() error {
			_, err := c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: long, SourceVolumeId: volID})
			return err
		}, codes.InvalidArgument, "129 bytes"},
		{"bad list token", func() error {
			_, err := c.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: "../x"})
			return err
		}, codes.Aborted, "starting_token"},
		{"validate unknown volume", func() error {
			_, err := c.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: long, VolumeCapabilities: []*csi.VolumeCapability{blockCap()}})
			return err
		}, codes.NotFound, "volume_id"},
	}
	before := storeState(t, st.Root())
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if status.Code(err) != tc.code || !strings.Contains(status.Convert(err).Message(), tc.msg) {
				t.Errorf("got %v, want %s with %q", err, tc.code, tc.msg)
			}
			if after := storeState(t, st.Root()); !maps.Equal(before, after) {
				t.Errorf("the store changed")
			}
		})
	}
}
