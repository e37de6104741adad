package driver

import (
	"context"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"
)

// NodeExpandVolume grows a staged volume: the image (Store.ExpandVolume
// grows the live top and records the size), then the loop device, then
// the filesystem at the staging path (ext4 online, xfs through its
// mount). The controller does not expand (docs/driver.md): the central
// resizer only updates the objects and this call does the work.
func (n nodeServer) NodeExpandVolume(ctx context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	id := req.GetVolumeId()
	v, s, unlock, err := n.d.lockStagedAt(id, req.GetVolumePath(), func() error {
		if c := req.GetVolumeCapability(); c != nil {
			if err := checkCapability(c); err != nil {
				return invalid("volume_capability: %v", err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	defer unlock()
	st, err := n.d.store()
	if err != nil {
		return nil, err
	}
	size := v.Capacity
	if r := req.GetCapacityRange(); r.GetRequiredBytes() > 0 || r.GetLimitBytes() > 0 {
		if size, err = volumeSize(r); err != nil {
			return nil, err
		}
	}
	if size < v.Capacity {
		size = v.Capacity // never shrink; a size already reached is done
	}
	if s.readOnly {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is staged read-only", id)
	}
	if v, err = st.ExpandVolume(id, size); err != nil {
		return nil, grpcError(err)
	}
	if err := s.dev.Resize(); err != nil {
		return nil, status.Errorf(codes.Internal, "resizing %s: %v", s.device(), err)
	}
	if !s.block {
		if _, err := mount.NewResizeFs(utilexec.New()).Resize(s.device(), s.path); err != nil {
			return nil, status.Errorf(codes.Internal, "growing the filesystem on %s: %v", s.device(), err)
		}
	}
	return &csi.NodeExpandVolumeResponse{CapacityBytes: v.Capacity}, nil
}
