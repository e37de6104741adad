package demo

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
)

// session is the demo's CSI client and what it has made, so that
// teardown can undo it in reverse.
type session struct {
	ctl    csi.ControllerClient
	node   csi.NodeClient
	ident  csi.IdentityClient
	root   string
	nodeID string
	// made, in order: volumes and snapshots to delete, stagings and
	// publications to take down.
	undo []func(context.Context) error
}

func newSession(conn *grpc.ClientConn, root string) *session {
	return &session{ctl: csi.NewControllerClient(conn), node: csi.NewNodeClient(conn),
		ident: csi.NewIdentityClient(conn), root: root}
}

// waitReady polls Probe until the driver's store is open and recovered,
// or the driver has exited.
func (s *session) waitReady(ctx context.Context, sock string, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		// Dialing before the socket exists would cost gRPC's reconnect
		// backoff (a second) after the first failure.
		var r *csi.ProbeResponse
		_, err := os.Stat(sock)
		if err == nil {
			r, err = s.ident.Probe(ctx, &csi.ProbeRequest{})
		}
		if err == nil && r.GetReady().GetValue() {
			info, err := s.node.NodeGetInfo(ctx, &csi.NodeGetInfoRequest{})
			if err != nil {
				return err
			}
			s.nodeID = info.NodeId
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("the driver stopped before it was ready")
		case <-ctx.Done():
			return fmt.Errorf("the driver did not become ready: %w (last probe: %v)", ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func mountCap(fs string) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fs}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

func blockCap() *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

// createVolume makes a volume on this node, as external-provisioner does
// for a WaitForFirstConsumer claim, and remembers to delete it.
func (s *session) createVolume(ctx context.Context, name string, c *csi.VolumeCapability, params map[string]string, src *csi.VolumeContentSource) (*csi.Volume, error) {
	top := &csi.Topology{Segments: map[string]string{"topology.csi-qcow2.io/node": s.nodeID}}
	r, err := s.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{
		Name:                      name,
		VolumeCapabilities:        []*csi.VolumeCapability{c},
		Parameters:                params,
		VolumeContentSource:       src,
		AccessibilityRequirements: &csi.TopologyRequirement{Requisite: []*csi.Topology{top}, Preferred: []*csi.Topology{top}},
	})
	if err != nil {
		return nil, fmt.Errorf("CreateVolume %s: %w", name, err)
	}
	id := r.Volume.VolumeId
	s.undo = append(s.undo, func(ctx context.Context) error {
		_, err := s.ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
		return err
	})
	return r.Volume, nil
}

func (s *session) createSnapshot(ctx context.Context, name, volume, typ string) (*csi.Snapshot, error) {
	r, err := s.ctl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: volume,
		Parameters: map[string]string{"type": typ}})
	if err != nil {
		return nil, fmt.Errorf("CreateSnapshot %s: %w", name, err)
	}
	id := r.Snapshot.SnapshotId
	s.undo = append(s.undo, func(ctx context.Context) error {
		_, err := s.ctl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: id})
		return err
	})
	return r.Snapshot, nil
}

// attach stages and publishes volume id as kubelet does, and returns the
// target path: a directory for a filesystem, a device file for block.
func (s *session) attach(ctx context.Context, id, name string, c *csi.VolumeCapability) (string, error) {
	staging := filepath.Join(s.root, "kubelet", "staging", name)
	target := filepath.Join(s.root, "kubelet", "pods", name)
	if err := os.MkdirAll(staging, 0o750); err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
		return "", err
	}
	if _, err := s.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: c}); err != nil {
		return "", fmt.Errorf("NodeStageVolume %s: %w", name, err)
	}
	s.undo = append(s.undo, func(ctx context.Context) error {
		_, err := s.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
		return err
	})
	if _, err := s.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging,
		TargetPath: target, VolumeCapability: c}); err != nil {
		return "", fmt.Errorf("NodePublishVolume %s: %w", name, err)
	}
	s.undo = append(s.undo, func(ctx context.Context) error {
		_, err := s.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
		return err
	})
	return target, nil
}

// teardown undoes what the session made, newest first, and returns the
// first error; it goes on past errors so that as much as possible goes.
func (s *session) teardown(ctx context.Context) error {
	var first error
	for i := len(s.undo) - 1; i >= 0; i-- {
		if err := s.undo[i](ctx); err != nil && first == nil {
			first = err
		}
	}
	s.undo = nil
	return first
}
