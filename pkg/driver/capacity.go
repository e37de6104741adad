package driver

import (
	"context"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// GetCapacity answers for this node only: a request for another
// topology gets 0 (the provisioner publishes one CSIStorageCapacity per
// node, each from that node's driver).
func (c controllerServer) GetCapacity(ctx context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	st, err := c.d.store()
	if err != nil {
		return nil, err
	}
	if len(req.GetVolumeCapabilities()) > 0 {
		if err := checkCapabilities(req.GetVolumeCapabilities()); err != nil {
			return &csi.GetCapacityResponse{}, nil
		}
	}
	if _, _, err := volumeParams(req.GetParameters()); err != nil {
		return nil, err
	}
	if t := req.GetAccessibleTopology(); t != nil {
		if node, ok := t.GetSegments()[TopologyKey]; ok && node != c.d.cfg.NodeID {
			return &csi.GetCapacityResponse{}, nil
		}
	}
	u, err := st.Usage()
	if err != nil {
		return nil, grpcError(err)
	}
	avail := u.Available(c.d.cfg.Overcommit)
	return &csi.GetCapacityResponse{
		AvailableCapacity: avail,
		MaximumVolumeSize: wrapperspb.Int64(min(avail, maxVolumeSize)),
		MinimumVolumeSize: wrapperspb.Int64(minAlign),
	}, nil
}
