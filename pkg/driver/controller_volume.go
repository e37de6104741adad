package driver

import (
	"context"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/csi-qcow2/csi-qcow2/pkg/driver/store"
)

// CSI's bounds on names and IDs.
const maxNameBytes = 128

func (c controllerServer) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	st, err := c.d.store()
	if err != nil {
		return nil, err
	}
	if err := checkName(req.GetName()); err != nil {
		return nil, err
	}
	if err := checkCapabilities(req.GetVolumeCapabilities()); err != nil {
		return nil, err
	}
	if err := c.d.checkRequirements(req.GetAccessibilityRequirements()); err != nil {
		return nil, err
	}
	params, image, err := volumeParams(req.GetParameters())
	if err != nil {
		return nil, err
	}
	size, err := volumeSize(req.GetCapacityRange())
	if err != nil {
		return nil, err
	}
	spec := store.VolumeSpec{Name: req.GetName(), Capacity: size, Params: params, Image: image,
		Limit: req.GetCapacityRange().GetLimitBytes()}
	if src := req.GetVolumeContentSource(); src != nil {
		if image != nil {
			return nil, invalid("a volume from a snapshot or a clone cannot also name a golden image (%s)", paramImageURL)
		}
		if spec.Source, err = contentSource(src); err != nil {
			return nil, err
		}
	}
	if (spec.Source != nil || image != nil) && req.GetCapacityRange().GetRequiredBytes() == 0 {
		spec.Capacity = 0 // the source's size, within the limit
	}
	v, err := st.CreateVolume(ctx, spec)
	if err != nil {
		return nil, grpcError(err)
	}
	return &csi.CreateVolumeResponse{Volume: c.d.csiVolume(v, req.GetVolumeContentSource())}, nil
}

func (d *Driver) csiVolume(v store.Volume, src *csi.VolumeContentSource) *csi.Volume {
	return &csi.Volume{
		VolumeId:           v.ID,
		CapacityBytes:      v.Capacity,
		ContentSource:      src,
		AccessibleTopology: d.topology(),
	}
}

func contentSource(src *csi.VolumeContentSource) (*store.Source, error) {
	switch t := src.GetType().(type) {
	case *csi.VolumeContentSource_Snapshot:
		id := t.Snapshot.GetSnapshotId()
		if id == "" {
			return nil, invalid("volume_content_source.snapshot.snapshot_id is missing")
		}
		return &store.Source{Kind: store.SourceSnapshot, ID: id}, nil
	case *csi.VolumeContentSource_Volume:
		id := t.Volume.GetVolumeId()
		if id == "" {
			return nil, invalid("volume_content_source.volume.volume_id is missing")
		}
		return &store.Source{Kind: store.SourceVolume, ID: id}, nil
	}
	return nil, invalid("volume_content_source names neither a snapshot nor a volume")
}

// checkRequirements refuses a volume that must be somewhere this node is
// not: the provisioner asks the node it selected (WaitForFirstConsumer).
func (d *Driver) checkRequirements(req *csi.TopologyRequirement) error {
	if req == nil || (len(req.GetRequisite()) == 0 && len(req.GetPreferred()) == 0) {
		return nil
	}
	for _, list := range [][]*csi.Topology{req.GetRequisite(), req.GetPreferred()} {
		for _, t := range list {
			if node, ok := t.GetSegments()[TopologyKey]; ok && node == d.cfg.NodeID {
				return nil
			}
		}
	}
	return status.Errorf(codes.ResourceExhausted, "the volume's topology does not include node %q", d.cfg.NodeID)
}

func checkName(name string) error {
	switch {
	case name == "":
		return invalid("name is missing")
	case len(name) > maxNameBytes:
		return invalid("name is %d bytes; at most %d", len(name), maxNameBytes)
	}
	return nil
}

func checkVolumeID(id string) error {
	switch {
	case id == "":
		return invalid("volume_id is missing")
	case len(id) > maxNameBytes:
		return status.Errorf(codes.NotFound, "volume_id is %d bytes: not a csi-qcow2 volume", len(id))
	}
	return nil
}

func (c controllerServer) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	st, err := c.d.store()
	if err != nil {
		return nil, err
	}
	if req.GetVolumeId() == "" {
		return nil, invalid("volume_id is missing")
	}
	if o, ok := c.d.node.orphan(req.GetVolumeId()); ok {
		// The CO counts it staged (an earlier run staged it on FUSE):
		// a live stage keeps it too (store.ErrInUse).
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is still staged at %s on this node", req.GetVolumeId(), o.Path)
	}
	if err := st.DeleteVolume(req.GetVolumeId()); err != nil {
		return nil, grpcError(err)
	}
	return &csi.DeleteVolumeResponse{}, nil
}

func (c controllerServer) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	st, err := c.d.store()
	if err != nil {
		return nil, err
	}
	if err := checkVolumeID(req.GetVolumeId()); err != nil {
		return nil, err
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, invalid("volume_capabilities are missing")
	}
	if _, err := st.GetVolume(req.GetVolumeId()); err != nil {
		return nil, grpcError(err)
	}
	if err := checkCapabilities(req.GetVolumeCapabilities()); err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: status.Convert(err).Message()}, nil
	}
	if _, _, err := volumeParams(req.GetParameters()); err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: status.Convert(err).Message()}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}, nil
}

func (c controllerServer) ControllerGetVolume(ctx context.Context, req *csi.ControllerGetVolumeRequest) (*csi.ControllerGetVolumeResponse, error) {
	st, err := c.d.store()
	if err != nil {
		return nil, err
	}
	if err := checkVolumeID(req.GetVolumeId()); err != nil {
		return nil, err
	}
	v, err := st.GetVolume(req.GetVolumeId())
	if err != nil {
		return nil, grpcError(err)
	}
	return &csi.ControllerGetVolumeResponse{
		Volume: c.d.csiVolume(v, nil),
		Status: &csi.ControllerGetVolumeResponse_VolumeStatus{},
	}, nil
}
