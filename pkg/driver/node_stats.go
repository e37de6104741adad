package driver

import (
	"context"
	"io"
	"os"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/csi-qcow2/csi-qcow2/pkg/driver/store"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// stagedAt returns volume id, staged here, if path is its staging path
// or one of its targets; NotFound otherwise. The caller holds id's lock.
func (d *Driver) stagedAt(id, path string) (*staged, error) {
	s := d.node.get(id)
	if s != nil {
		if _, ok := s.targets[path]; ok || path == s.path {
			return s, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "volume %s is not staged or published at %q", id, path)
}

// lockStagedAt checks a request naming volume id at path, takes id's
// lock, and returns the volume and its stage there (stagedAt), with the
// unlock. check, if set, validates the rest of the request first.
func (d *Driver) lockStagedAt(id, path string, check func() error) (store.Volume, *staged, func(), error) {
	st, err := d.store()
	if err != nil {
		return store.Volume{}, nil, nil, err
	}
	if err := checkVolumeID(id); err != nil {
		return store.Volume{}, nil, nil, err
	}
	if path == "" {
		return store.Volume{}, nil, nil, invalid("volume_path is missing")
	}
	if check != nil {
		if err := check(); err != nil {
			return store.Volume{}, nil, nil, err
		}
	}
	unlock, err := d.node.lock(id)
	if err != nil {
		return store.Volume{}, nil, nil, err
	}
	v, err := st.GetVolume(id)
	if err != nil {
		unlock()
		return store.Volume{}, nil, nil, grpcError(err)
	}
	s, err := d.stagedAt(id, path)
	if err != nil {
		unlock()
		return store.Volume{}, nil, nil, err
	}
	return v, s, unlock, nil
}

// NodeGetVolumeStats reports the filesystem's bytes and inodes for mount
// access, the device's size for block access.
func (n nodeServer) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	path := req.GetVolumePath()
	_, s, unlock, err := n.d.lockStagedAt(req.GetVolumeId(), path, nil)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if s.block {
		size, err := deviceSize(s.device())
		if err != nil {
			return nil, status.Errorf(codes.Internal, "size of %s: %v", s.device(), err)
		}
		return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{{Unit: csi.VolumeUsage_BYTES, Total: size}}}, nil
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return nil, status.Errorf(codes.Internal, "statfs %s: %v", path, err)
	}
	bsize := int64(fs.Bsize)
	return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{{
		Unit:      csi.VolumeUsage_BYTES,
		Total:     int64(fs.Blocks) * bsize,
		Available: int64(fs.Bavail) * bsize,
		Used:      int64(fs.Blocks-fs.Bfree) * bsize,
	}, {
		Unit:      csi.VolumeUsage_INODES,
		Total:     int64(fs.Files),
		Available: int64(fs.Ffree),
		Used:      int64(fs.Files - fs.Ffree),
	}}}, nil
}

func deviceSize(dev string) (int64, error) {
	f, err := os.Open(dev)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return f.Seek(0, io.SeekEnd)
}

// NodeGetVolumeHealth reports what ControllerGetVolumeHealth reports:
// its chain's files are there, its top is not marked corrupt, nothing
// failed on the image's account, and its attachment's writes found space
// and met no I/O error.
func (n nodeServer) NodeGetVolumeHealth(ctx context.Context, req *csi.NodeGetVolumeHealthRequest) (*csi.NodeGetVolumeHealthResponse, error) {
	h, err := n.d.getVolumeHealth(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	return &csi.NodeGetVolumeHealthResponse{VolumeHealth: h}, nil
}
