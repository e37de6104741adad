package driver

import (
	"context"

	"path/filepath"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
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

// nodeServer answers what the controller side needs of a node (its ID
// and topology: csi-sanity and the provisioner ask them) and unpublish.
// Staging and publishing are the next part of the driver; until then
// the node advertises no capability, and their RPCs answer
// Unimplemented.
type nodeServer struct {
	csi.UnimplementedNodeServer
	d *Driver
}

func (n nodeServer) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{
		NodeId:             n.d.cfg.NodeID,
		AccessibleTopology: n.d.topology()[0],
	}, nil
}

func (n nodeServer) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	return &csi.NodeGetCapabilitiesResponse{}, nil
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
	if _, err := st.GetVolume(req.GetVolumeId()); err != nil {
		return nil, grpcError(err)
	}
	if err := mount.CleanupMountPoint(req.GetTargetPath(), n.d.mounter, true); err != nil {
		return nil, status.Errorf(codes.Internal, "unmounting %s: %v", req.GetTargetPath(), err)
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}
