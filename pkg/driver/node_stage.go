package driver

import (
	"context"
	"errors"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"
)

// checkNodePath refuses a path the node service would mount on or
// remove that is not absolute and clean, or lies in the state directory.
func (d *Driver) checkNodePath(field, path string) error {
	switch {
	case path == "":
		return invalid("%s is missing", field)
	case !filepath.IsAbs(path) || filepath.Clean(path) != path:
		return invalid("%s %q is not an absolute, clean path", field, path)
	case d.inStateDir(path):
		return invalid("%s %q lies in the driver's state directory", field, path)
	}
	return nil
}

func readOnlyMode(c *csi.VolumeCapability) bool {
	return c.GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY
}

// NodeStageVolume serves the volume as a loop device (its image held
// open, a FUSE file under <state-dir>/attach/<id>, a loop device over
// it) and, for mount access, formats the device when it is empty and
// mounts it at the staging path. Block access mounts nothing.
func (n nodeServer) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	st, err := n.d.store()
	if err != nil {
		return nil, err
	}
	id, path, c := req.GetVolumeId(), req.GetStagingTargetPath(), req.GetVolumeCapability()
	if err := checkVolumeID(id); err != nil {
		return nil, err
	}
	if err := n.d.checkNodePath("staging_target_path", path); err != nil {
		return nil, err
	}
	if c == nil {
		return nil, invalid("volume_capability is missing")
	}
	if err := checkCapability(c); err != nil {
		return nil, invalid("volume_capability: %v", err)
	}
	unlock, err := n.d.node.lock(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if _, err := st.GetVolume(id); err != nil {
		return nil, grpcError(err)
	}
	want := stagedFor(path, c)
	if s := n.d.node.get(id); s != nil {
		if s.path != path {
			return nil, status.Errorf(codes.FailedPrecondition, "volume %s is staged at %s", id, s.path)
		}
		if s.block != want.block || s.fsType != want.fsType || s.readOnly != want.readOnly || !slices.Equal(s.flags, want.flags) {
			return nil, status.Errorf(codes.AlreadyExists, "volume %s is staged at %s with another capability", id, path)
		}
		return &csi.NodeStageVolumeResponse{}, nil
	}
	if o, ok := n.d.node.orphan(id); ok && o.Path == path {
		// Staged here by an earlier run on FUSE: the same stage again,
		// over a new device.
		if o.Block != want.block || o.FsType != want.fsType || o.ReadOnly != want.readOnly || !slices.Equal(o.Flags, want.flags) {
			return nil, status.Errorf(codes.AlreadyExists, "volume %s is staged at %s with another capability", id, path)
		}
		if _, err := n.d.restage(id, o); err != nil {
			return nil, err
		}
		return &csi.NodeStageVolumeResponse{}, nil
	} else if ok {
		// The CO stages it elsewhere: the old staging path's dead
		// filesystem goes, and the new stage's record replaces the old.
		if err := n.d.unmountDead(id, o); err != nil {
			return nil, err
		}
		n.d.node.dropOrphan(id)
	}
	if err := n.d.stage(id, want); err != nil {
		return nil, err
	}
	return &csi.NodeStageVolumeResponse{}, nil
}

// stage attaches volume id, mounts it as want says, records it and keeps
// it; on error it leaves nothing attached, mounted or recorded.
func (d *Driver) stage(id string, want *staged) error {
	dev, watch, release, err := d.attach(id, want.readOnly)
	if err != nil {
		return err
	}
	want.dev, want.watch, want.release = dev, watch, release
	if !want.block {
		if err := d.mountStaging(want); err != nil {
			return errors.Join(err, detach(id, dev, release))
		}
	}
	if err := d.saveStaged(id, want); err != nil {
		// Unrecorded, a restart could not serve it again: undone.
		if !want.block {
			err = errors.Join(err, unmountIfMounted(d.mounter, want.path))
		}
		return errors.Join(status.Error(codes.Internal, err.Error()), detach(id, dev, release))
	}
	d.node.put(id, want)
	return nil
}

// stagedFor is what staging at path with capability c makes.
func stagedFor(path string, c *csi.VolumeCapability) *staged {
	s := &staged{path: path, readOnly: readOnlyMode(c), targets: map[string]bool{}}
	if c.GetBlock() != nil {
		s.block = true
		return s
	}
	s.fsType = c.GetMount().GetFsType()
	if s.fsType == "" {
		s.fsType = "ext4"
	}
	s.flags = slices.Clone(c.GetMount().GetMountFlags())
	return s
}

func (d *Driver) formatter() *mount.SafeFormatAndMount {
	return mount.NewSafeFormatAndMount(d.mounter, utilexec.New())
}

// mountStaging formats s's device when it holds no filesystem and
// mounts it at s.path (made if missing), with s's flags. A writable
// filesystem smaller than its device is grown to it where that can be
// done mounted (growStaged).
//
// xfs always gets nouuid: a clone or a restore carries its source's
// filesystem UUID, and xfs refuses a second mount of a UUID on the node
// ("Filesystem has duplicate UUID") while the source is mounted. The
// volumes are different devices, so nothing is shared between the two
// mounts but the name.
func (d *Driver) mountStaging(s *staged) error {
	if err := os.MkdirAll(s.path, 0o750); err != nil {
		return status.Errorf(codes.Internal, "staging path: %v", err)
	}
	opts := slices.Clone(s.flags)
	if s.fsType == "xfs" && !slices.Contains(opts, "nouuid") {
		opts = append(opts, "nouuid")
	}
	if s.readOnly {
		opts = append(opts, "ro")
	}
	if err := d.formatter().FormatAndMount(s.device(), s.path, s.fsType, opts); err != nil {
		return status.Errorf(codes.Internal, "mounting %s (%s) at %s: %v", s.device(), s.fsType, s.path, err)
	}
	d.growStaged(s)
	return nil
}

// NodeUnstageVolume unmounts the staging path, takes the loop device
// down and closes the image. A volume not staged here is done.
func (n nodeServer) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	if _, err := n.d.store(); err != nil {
		return nil, err
	}
	id, path := req.GetVolumeId(), req.GetStagingTargetPath()
	if err := checkVolumeID(id); err != nil {
		return nil, err
	}
	if err := n.d.checkNodePath("staging_target_path", path); err != nil {
		return nil, err
	}
	unlock, err := n.d.node.lock(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	s := n.d.node.get(id)
	if s == nil && n.d.leftByEarlierRun(id, path) {
		// Its FUSE connection died with that run; the filesystem
		// still holds the loop device until it is unmounted.
		if err := unmountIfMounted(n.d.mounter, path); err != nil {
			return nil, err
		}
	}
	if s == nil {
		if o, ok := n.d.node.orphan(id); ok && o.Path == path {
			if err := n.d.unmountDead(id, o); err != nil {
				return nil, err
			}
			if err := n.d.forgetOrphan(id); err != nil {
				return nil, err
			}
		}
		return &csi.NodeUnstageVolumeResponse{}, nil
	}
	if s.path != path {
		return &csi.NodeUnstageVolumeResponse{}, nil
	}
	if len(s.targets) > 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is still published at %s", id, slices.Sorted(maps.Keys(s.targets))[0])
	}
	if !s.block {
		if err := unmountIfMounted(n.d.mounter, path); err != nil {
			return nil, err
		}
	}
	// DATA_LOSS: detached and released, so the volume is unstaged; the
	// loss is still answered (a retry then finds nothing staged).
	lost := detach(id, s.dev, s.release)
	if lost != nil && status.Code(lost) != codes.DataLoss {
		return nil, lost
	}
	n.d.node.put(id, nil)
	if err := n.d.dropStaged(id); err != nil {
		return nil, errors.Join(lost, status.Error(codes.Internal, err.Error()))
	}
	if lost != nil {
		return nil, lost
	}
	return &csi.NodeUnstageVolumeResponse{}, nil
}

// unmountIfMounted unmounts path when something is mounted there; the
// path itself stays (the CO made it).
func unmountIfMounted(m mount.Interface, path string) error {
	notMnt, err := mount.IsNotMountPoint(m, path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return status.Errorf(codes.Internal, "checking %s: %v", path, err)
	case notMnt:
		return nil
	}
	if err := m.Unmount(path); err != nil {
		return status.Errorf(codes.Internal, "unmounting %s: %v", path, err)
	}
	return nil
}
