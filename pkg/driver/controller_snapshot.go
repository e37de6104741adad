package driver

import (
	"context"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/csi-qcow2/csi-qcow2/pkg/driver/store"
)

func (c controllerServer) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	st, err := c.d.store()
	if err != nil {
		return nil, err
	}
	if err := checkName(req.GetName()); err != nil {
		return nil, err
	}
	if req.GetSourceVolumeId() == "" {
		return nil, invalid("source_volume_id is missing")
	}
	// A snapshot is where its volume is: a requirement without this node
	// cannot be met here.
	if err := c.d.checkRequirements(req.GetAccessibilityRequirements()); err != nil {
		return nil, err
	}
	typ, err := snapshotParams(req.GetParameters())
	if err != nil {
		return nil, err
	}
	sn, err := st.CreateSnapshot(ctx, store.SnapshotSpec{Name: req.GetName(), Volume: req.GetSourceVolumeId(), Type: typ})
	if err != nil {
		return nil, grpcError(err)
	}
	return &csi.CreateSnapshotResponse{Snapshot: c.d.csiSnapshot(sn)}, nil
}

func (d *Driver) csiSnapshot(sn store.Snapshot) *csi.Snapshot {
	return &csi.Snapshot{
		SnapshotId:         sn.ID,
		SourceVolumeId:     sn.Volume,
		SizeBytes:          sn.Size,
		CreationTime:       timestamppb.New(sn.Created),
		ReadyToUse:         true,
		AccessibleTopology: d.topology(),
	}
}

func (c controllerServer) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	st, err := c.d.store()
	if err != nil {
		return nil, err
	}
	if req.GetSnapshotId() == "" {
		return nil, invalid("snapshot_id is missing")
	}
	if err := st.DeleteSnapshot(req.GetSnapshotId()); err != nil {
		return nil, grpcError(err)
	}
	return &csi.DeleteSnapshotResponse{}, nil
}

func (c controllerServer) ListSnapshots(ctx context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	st, err := c.d.store()
	if err != nil {
		return nil, err
	}
	var all []store.Snapshot
	switch {
	case req.GetSnapshotId() != "":
		// One snapshot, or none: an unknown ID lists nothing.
		if sn, err := st.GetSnapshot(req.GetSnapshotId()); err == nil {
			all = append(all, sn)
		}
	default:
		for _, sn := range st.ListSnapshots() {
			if v := req.GetSourceVolumeId(); v == "" || sn.Volume == v {
				all = append(all, sn)
			}
		}
	}
	start, end, next, err := page(len(all), req.GetMaxEntries(), req.GetStartingToken())
	if err != nil {
		return nil, err
	}
	resp := &csi.ListSnapshotsResponse{NextToken: next}
	for _, sn := range all[start:end] {
		resp.Entries = append(resp.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: c.d.csiSnapshot(sn)})
	}
	return resp, nil
}
