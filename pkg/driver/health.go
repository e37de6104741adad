package driver

import (
	"context"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/csi-qcow2/csi-qcow2/pkg/driver/store"
)

// volumeHealth turns the store's view of a volume into CSI's: nothing
// when it is well, else one entry that says why.
func volumeHealth(id string, c store.Condition) *csi.VolumeHealth {
	h := &csi.VolumeHealth{VolumeId: id}
	if c.Abnormal {
		h.HealthStatuses = append(h.HealthStatuses, &csi.VolumeHealth_VolumeHealthEntry{
			Status:  healthStatus(c.Reason),
			Reason:  c.Reason,
			Message: c.Message,
		})
	}
	return h
}

func healthStatus(reason string) csi.VolumeHealthErrorType {
	switch reason {
	case store.ReasonCorrupt, store.ReasonMissingLayer:
		return csi.VolumeHealthErrorType_DATA_LOSS
	}
	return csi.VolumeHealthErrorType_INACCESSIBLE
}

// condition is volume id's condition, also kept in the metrics: the
// store's (its files, its image), else what its attachment's requests
// met on this node (ioWatch).
func (d *Driver) condition(st *store.Store, id string) (store.Condition, error) {
	cond, err := st.Health(id)
	if err != nil {
		return cond, err
	}
	if s := d.node.get(id); s != nil && !cond.Abnormal && s.watch != nil {
		if c := s.watch.condition(); c.Abnormal {
			cond = c
		}
	}
	d.metrics.health(id, cond)
	return cond, nil
}

// getVolumeHealth answers both services' GetVolumeHealth: volume id's
// condition.
func (d *Driver) getVolumeHealth(id string) (*csi.VolumeHealth, error) {
	st, err := d.store()
	if err != nil {
		return nil, err
	}
	if err := checkVolumeID(id); err != nil {
		return nil, err
	}
	cond, err := d.condition(st, id)
	if err != nil {
		return nil, grpcError(err)
	}
	return volumeHealth(id, cond), nil
}

func (c controllerServer) ControllerGetVolumeHealth(ctx context.Context, req *csi.ControllerGetVolumeHealthRequest) (*csi.ControllerGetVolumeHealthResponse, error) {
	h, err := c.d.getVolumeHealth(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	return &csi.ControllerGetVolumeHealthResponse{VolumeHealth: h}, nil
}

// ControllerListVolumeHealth lists the volumes that are not well.
func (c controllerServer) ControllerListVolumeHealth(ctx context.Context, req *csi.ControllerListVolumeHealthRequest) (*csi.ControllerListVolumeHealthResponse, error) {
	st, err := c.d.store()
	if err != nil {
		return nil, err
	}
	var sick []*csi.VolumeHealth
	for _, v := range st.ListVolumes() {
		cond, err := c.d.condition(st, v.ID)
		if err != nil {
			continue // deleted meanwhile
		}
		if cond.Abnormal {
			sick = append(sick, volumeHealth(v.ID, cond))
		}
	}
	start, end, next, err := page(len(sick), req.GetMaxEntries(), req.GetStartingToken())
	if err != nil {
		return nil, err
	}
	return &csi.ControllerListVolumeHealthResponse{Entries: sick[start:end], NextToken: next}, nil
}
