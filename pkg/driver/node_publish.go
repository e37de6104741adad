package driver

import (
	"context"
	"errors"
	"os"
	"path/filepath"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// NodePublishVolume bind-mounts a staged volume at the target path: the
// staging mount onto a directory (mount access), or the loop device onto
// a file (block access). The target is made if missing; readonly (or a
// reader-only access mode) makes the bind mount read-only.
func (n nodeServer) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	if _, err := n.d.store(); err != nil {
		return nil, err
	}
	id, target, c := req.GetVolumeId(), req.GetTargetPath(), req.GetVolumeCapability()
	if err := checkVolumeID(id); err != nil {
		return nil, err
	}
	if err := n.d.checkNodePath("target_path", target); err != nil {
		return nil, err
	}
	if c == nil {
		return nil, invalid("volume_capability is missing")
	}
	if err := checkCapability(c); err != nil {
		return nil, invalid("volume_capability: %v", err)
	}
	stagingPath := req.GetStagingTargetPath()
	if err := n.d.checkNodePath("staging_target_path", stagingPath); err != nil {
		return nil, err
	}
	unlock, err := n.d.node.lock(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	st, _ := n.d.store()
	if _, err := st.GetVolume(id); err != nil {
		return nil, grpcError(err)
	}
	s := n.d.node.get(id)
	if o, ok := n.d.node.orphan(id); s == nil && ok && o.Path == stagingPath {
		// The CO kept the volume staged across a restart of the driver
		// on FUSE (a new pod on the node reuses it): stage it anew first.
		if (c.GetBlock() != nil) != o.Block {
			return nil, invalid("volume %s is staged for %s access", id, accessName(o.Block))
		}
		if s, err = n.d.restage(id, o); err != nil {
			return nil, err
		}
	}
	if s == nil || s.path != stagingPath {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is not staged at %s", id, stagingPath)
	}
	if (c.GetBlock() != nil) != s.block {
		return nil, invalid("volume %s is staged for %s access", id, accessName(s.block))
	}
	readOnly := req.GetReadonly() || readOnlyMode(c) || s.readOnly
	if s.dead[target] {
		// Published again where an earlier run's dead filesystem still
		// is (a kubelet that lost track): that bind goes, a live one
		// takes its place.
		if err := n.d.dropDeadTarget(id, s, target); err != nil {
			return nil, err
		}
	}
	if ro, ok := s.targets[target]; ok {
		if ro != readOnly {
			return nil, status.Errorf(codes.AlreadyExists, "volume %s is published at %s with readonly=%v", id, target, ro)
		}
		return &csi.NodePublishVolumeResponse{}, nil
	}
	if c.GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER && len(s.targets) > 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is single-writer and already published", id)
	}
	opts := []string{"bind"}
	if readOnly {
		opts = append(opts, "ro")
	}
	source := s.path
	if s.block {
		source = s.device()
		if err := makeFile(target); err != nil {
			return nil, err
		}
	} else if err := os.MkdirAll(target, 0o750); err != nil {
		return nil, status.Errorf(codes.Internal, "target path: %v", err)
	}
	if err := n.d.mounter.Mount(source, target, "", opts); err != nil {
		return nil, status.Errorf(codes.Internal, "bind-mounting %s at %s: %v", source, target, err)
	}
	s.targets[target] = readOnly
	if err := n.d.saveStaged(req.GetVolumeId(), s); err != nil {
		delete(s.targets, target)
		return nil, errors.Join(status.Error(codes.Internal, err.Error()), n.d.mounter.Unmount(target))
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

func accessName(block bool) string {
	if block {
		return "block"
	}
	return "mount"
}

// makeFile makes target (and its parent) as an empty file for a block
// device to be bound onto.
func makeFile(target string) error {
	if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
		return status.Errorf(codes.Internal, "target path: %v", err)
	}
	f, err := os.OpenFile(target, os.O_CREATE|os.O_RDONLY, 0o640)
	if err != nil {
		return status.Errorf(codes.Internal, "target path: %v", err)
	}
	return f.Close()
}
