package driver

import (
	"context"

	"path/filepath"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
	"k8s.io/mount-utils"
)

// inStateDir reports whether path names the state directory or
// something under it.
func (d *Driver) inStateDir(path string) bool {
	root, err := filepath.Abs(d.cfg.StateDir)
	if err != nil {
		return true
	}
	rel, err := filepath.Rel(root, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

// nodeServer serves this node's volumes to pods over the FUSE + loop
// attach path: stage (node_stage.go), publish (node_publish.go), stats
// and health (node_stats.go), expand (node_expand.go).
type nodeServer struct {
	csi.UnimplementedNodeServer
	d *Driver
}

func (n nodeServer) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	klog.InfoS("node info", "node", n.d.cfg.NodeID, "attachPath", n.d.path.name())
	return &csi.NodeGetInfoResponse{
		NodeId:             n.d.cfg.NodeID,
		AccessibleTopology: n.d.topology()[0],
	}, nil
}

// nodeCaps is what the node service does.
var nodeCaps = []csi.NodeServiceCapability_RPC_Type{
	csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
	csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
	csi.NodeServiceCapability_RPC_GET_VOLUME_HEALTH,
	csi.NodeServiceCapability_RPC_EXPAND_VOLUME,
}

func (n nodeServer) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	var caps []*csi.NodeServiceCapability
	for _, t := range nodeCaps {
		caps = append(caps, &csi.NodeServiceCapability{Type: &csi.NodeServiceCapability_Rpc{Rpc: &csi.NodeServiceCapability_RPC{Type: t}}})
	}
	return &csi.NodeGetCapabilitiesResponse{Capabilities: caps}, nil
}

// NodeUnpublishVolume undoes a publish: whatever is mounted at the
// target path is unmounted and the path removed; a path with nothing
// mounted is just removed (the call is idempotent).
func (n nodeServer) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	st, err := n.d.store()
	if err != nil {
		return nil, err
	}
	if err := checkVolumeID(req.GetVolumeId()); err != nil {
		return nil, err
	}
	target := req.GetTargetPath()
	switch {
	case target == "":
		return nil, invalid("target_path is missing")
	case !filepath.IsAbs(target) || filepath.Clean(target) != target:
		return nil, invalid("target_path %q is not an absolute, clean path", target)
	case n.d.inStateDir(target):
		// The path is removed when nothing is mounted there: never one
		// of the store's own files.
		return nil, invalid("target_path %q lies in the driver's state directory", target)
	}
	unlock, err := n.d.node.lock(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	if _, err := st.GetVolume(req.GetVolumeId()); err != nil {
		return nil, grpcError(err)
	}
	if err := mount.CleanupMountPoint(req.GetTargetPath(), n.d.mounter, true); err != nil {
		return nil, status.Errorf(codes.Internal, "unmounting %s: %v", req.GetTargetPath(), err)
	}
	if s := n.d.node.get(req.GetVolumeId()); s != nil {
		// Recorded only when it changes: a retried unpublish rewrites
		// nothing.
		if _, ok := s.targets[target]; ok {
			delete(s.targets, target)
			delete(s.dead, target)
			if err := n.d.saveStaged(req.GetVolumeId(), s); err != nil {
				return nil, status.Error(codes.Internal, err.Error())
			}
		}
	} else if err := n.d.unpublishOrphan(req.GetVolumeId(), target); err != nil {
		return nil, err
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}
