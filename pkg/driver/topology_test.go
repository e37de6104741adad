package driver

import (
	"context"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// What csi-sanity's "snapshot with accessibility requirements" spec means
// to check: a volume and a snapshot made with the node's topology as
// requirement report exactly that topology, and a requirement that
// leaves this node out is ResourceExhausted (the provisioner and the
// snapshotter reschedule).
func TestSnapshotTopology(t *testing.T) {
	d, _ := startDriver(t, Config{})
	ctx := context.Background()
	ni, err := nodeServer{d: d}.NodeGetInfo(ctx, &csi.NodeGetInfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	here := &csi.TopologyRequirement{Requisite: []*csi.Topology{ni.GetAccessibleTopology()}, Preferred: []*csi.Topology{ni.GetAccessibleTopology()}}
	elsewhere := &csi.TopologyRequirement{Requisite: []*csi.Topology{{Segments: map[string]string{TopologyKey: "node-2"}}}}
	c := controllerServer{d: d}
	mk := func(req *csi.TopologyRequirement) (*csi.CreateVolumeResponse, error) {
		return c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-topo", AccessibilityRequirements: req,
			CapacityRange:      &csi.CapacityRange{RequiredBytes: 1 << 20},
			VolumeCapabilities: []*csi.VolumeCapability{blockCap()}})
	}
	if _, err := mk(elsewhere); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("volume required on another node: %v, want ResourceExhausted", err)
	}
	vol, err := mk(here)
	if err != nil {
		t.Fatal(err)
	}
	for _, topo := range vol.GetVolume().GetAccessibleTopology() {
		if !proto.Equal(topo, ni.GetAccessibleTopology()) {
			t.Errorf("volume topology %v, node %v", topo, ni.GetAccessibleTopology())
		}
	}
	snap := func(req *csi.TopologyRequirement) (*csi.CreateSnapshotResponse, error) {
		return c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap-topo", SourceVolumeId: vol.GetVolume().GetVolumeId(), AccessibilityRequirements: req})
	}
	if _, err := snap(elsewhere); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("snapshot required on another node: %v, want ResourceExhausted", err)
	}
	sn, err := snap(here)
	if err != nil {
		t.Fatal(err)
	}
	if got := sn.GetSnapshot().GetAccessibleTopology(); len(got) != 1 || !proto.Equal(got[0], ni.GetAccessibleTopology()) {
		t.Errorf("snapshot topology %v, want the node's %v", got, ni.GetAccessibleTopology())
	}
}

func blockCap() *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}
