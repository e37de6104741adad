package driver

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/csi-qcow2/csi-qcow2/internal/loopdev"
	"github.com/csi-qcow2/csi-qcow2/internal/qcow2nbd"
)

// staged is a volume this node has staged: its image held open, served
// as a loop device, and (mount access) a filesystem on it mounted at
// the staging path.
type staged struct {
	path     string // staging_target_path
	block    bool   // block access: nothing is mounted at path
	fsType   string // mount access: ext4 or xfs
	flags    []string
	readOnly bool
	dev      device   // the block device on this node's attach path
	watch    *ioWatch // what the attachment's requests met
	release  func() error
	// targets are the paths the volume is published at, with whether
	// each is read-only.
	targets map[string]bool
	// dead are the targets that still bind-mount the filesystem of an
	// earlier run's dead device (node_restage.go); each is in targets
	// too, so that unstage waits for them.
	dead map[string]bool
}

func (s *staged) device() string { return s.dev.Path() }

// nodeState is what the node service knows of its volumes: the staged
// ones, and a lock per volume so that one call at a time works on it.
// It lives in memory, rebuilt at start from the records of staged
// volumes (node_record.go, readopt.go) for the kernel NBD devices that
// outlive a restart; FUSE connections die with the process.
type nodeState struct {
	mu     sync.Mutex
	staged map[string]*staged // by volume ID
	busy   map[string]bool    // volume IDs a call is working on
	// stale are the loop devices an earlier run of the driver served
	// (device → volume ID), found at start.
	stale map[string]string
	// orphans are the volumes an earlier run staged on FUSE (by volume
	// ID): their devices died with it, the CO still counts them staged.
	// The next stage or publish at the recorded path stages them anew
	// (node_restage.go); unstage forgets them.
	orphans map[string]nodeRecord
}

func newNodeState() *nodeState {
	return &nodeState{staged: map[string]*staged{}, busy: map[string]bool{}, stale: map[string]string{}, orphans: map[string]nodeRecord{}}
}

// lock takes volume id for one call, or answers Aborted while another
// call has it (the CO retries).
func (n *nodeState) lock(id string) (unlock func(), err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.busy[id] {
		return nil, status.Errorf(codes.Aborted, "an operation on volume %s is in progress", id)
	}
	n.busy[id] = true
	return func() {
		n.mu.Lock()
		delete(n.busy, id)
		n.mu.Unlock()
	}, nil
}

func (n *nodeState) get(id string) *staged {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.staged[id]
}

func (n *nodeState) put(id string, s *staged) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if s == nil {
		delete(n.staged, id)
		return
	}
	n.staged[id] = s
}

// count is the number of staged volumes.
func (n *nodeState) count() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.staged)
}

// attach holds volume id open and serves it as a block device on this
// node's attach path, through an ioWatch.
func (d *Driver) attach(id string, readOnly bool) (device, *ioWatch, func() error, error) {
	st, err := d.store()
	if err != nil {
		return nil, nil, nil, err
	}
	live, release, err := st.Hold(id)
	if err != nil {
		return nil, nil, nil, grpcError(err)
	}
	watch := &ioWatch{Backend: qcow2nbd.New(live, readOnly)}
	dev, err := d.path.attach(id, watch)
	if err != nil {
		return nil, nil, nil, errors.Join(status.Errorf(codes.Internal, "attaching volume %s (%s): %v", id, d.path.name(), err), release())
	}
	return dev, watch, release, nil
}

// detach takes the device down and releases the image.
//
// A device that went but lost its users' unsynced writes (lostWrites) is
// released all the same, and the loss answered as DATA_LOSS: the CO
// shows it, and its retry finds the volume detached.
func detach(id string, dev device, release func() error) error {
	var lost lostWrites
	if err := dev.Detach(); errors.As(err, &lost) {
		klog.ErrorS(err, "writes left unsynced in the device's page cache were lost at detach", "volume", id, "device", dev.Path())
	} else if err != nil {
		return status.Errorf(codes.FailedPrecondition, "detaching volume %s from %s: %v", id, dev.Path(), err)
	}
	if err := release(); err != nil {
		return status.Errorf(codes.Internal, "closing volume %s: %v", id, err)
	}
	if lost.err != nil {
		return status.Errorf(codes.DataLoss, "volume %s detached from %s, but writes left unsynced there were lost: %v", id, dev.Path(), lost.err)
	}
	return nil
}

// cleanStaleAttachments takes down the FUSE mounts a previous run of the
// driver left under <state-dir>/attach: their connections died with
// that process, so every one is stale before this run stages anything.
// They are detached lazily, since a loop device over their file may
// still be held by a filesystem the CO has mounted: those devices are
// remembered first, for NodeUnstageVolume to unmount that filesystem.
// The empty mount points are removed.
func (d *Driver) cleanStaleAttachments() error {
	dir := filepath.Join(d.cfg.StateDir, attachDir)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	devs, _ := filepath.Glob("/sys/block/loop*")
	for _, sys := range devs {
		dev := "/dev/" + filepath.Base(sys)
		rel, err := filepath.Rel(dir, loopdev.Backing(dev))
		if err != nil || !filepath.IsLocal(rel) {
			continue
		}
		id, _, _ := strings.Cut(rel, "/")
		d.node.mu.Lock()
		d.node.stale[dev] = id
		d.node.mu.Unlock()
		klog.InfoS("loop device of an earlier run", "device", dev, "volume", id)
	}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		switch err := unix.Unmount(p, unix.MNT_DETACH); {
		case err == nil:
			klog.InfoS("stale attachment unmounted", "path", p)
		case !errors.Is(err, unix.EINVAL): // EINVAL: not a mount point
			return fmt.Errorf("unmounting stale attachment %s: %w", p, err)
		}
		if err := os.Remove(p); err != nil {
			klog.InfoS("stale attachment directory left", "path", p, "error", err)
		}
	}
	return nil
}

// leftByEarlierRun reports whether what is mounted at path is a loop
// device an earlier run of the driver served volume id on.
func (d *Driver) leftByEarlierRun(id, path string) bool {
	mps, err := d.mounter.List()
	if err != nil {
		return false
	}
	d.node.mu.Lock()
	defer d.node.mu.Unlock()
	for _, mp := range mps {
		if mp.Path == path && d.node.stale[mp.Device] == id {
			return true
		}
	}
	return false
}
