package driver

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/csi-qcow2/csi-qcow2/internal/qcow2nbd"
	"github.com/csi-qcow2/csi-qcow2/pkg/nbdattach/fuseloop"
)

// attachDir is where the FUSE mounts of the attach path live, one
// directory per staged volume: <state-dir>/attach/<volume-id>. The store
// neither reads nor collects it (it only touches its own directories).
const attachDir = "attach"

// detachPatience bounds how long NodeUnstageVolume retries a detach the
// loop device's other users hold up (fuseloop's Detach waits up to 5 s
// each time on its own).
const detachPatience = 15 * time.Second

// staged is a volume this node has staged: its image held open, served
// as a loop device, and (mount access) a filesystem on it mounted at
// the staging path.
type staged struct {
	path     string // staging_target_path
	block    bool   // block access: nothing is mounted at path
	fsType   string // mount access: ext4 or xfs
	flags    []string
	readOnly bool
	att      *fuseloop.Attachment
	release  func() error
	// targets are the paths the volume is published at, with whether
	// each is read-only.
	targets map[string]bool
}

func (s *staged) device() string { return s.att.Device() }

// nodeState is what the node service knows of its volumes: the staged
// ones, and a lock per volume so that one call at a time works on it.
// It lives in memory: the FUSE connections die with the process, so a
// restart has nothing to resume (see docs/fuseloop.md).
type nodeState struct {
	mu     sync.Mutex
	staged map[string]*staged // by volume ID
	busy   map[string]bool    // volume IDs a call is working on
}

func newNodeState() *nodeState {
	return &nodeState{staged: map[string]*staged{}, busy: map[string]bool{}}
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

// attach holds volume id open and serves it as a loop device.
func (d *Driver) attach(id string, readOnly bool) (*fuseloop.Attachment, func() error, error) {
	st, err := d.store()
	if err != nil {
		return nil, nil, err
	}
	live, release, err := st.Hold(id)
	if err != nil {
		return nil, nil, grpcError(err)
	}
	dir := filepath.Join(d.cfg.StateDir, attachDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, errors.Join(status.Errorf(codes.Internal, "attach directory: %v", err), release())
	}
	att, err := fuseloop.Attach(qcow2nbd.New(live, readOnly), fuseloop.Options{
		Dir:  filepath.Join(dir, id),
		Name: id,
		Logf: func(format string, args ...any) {
			klog.InfoS(fmt.Sprintf(format, args...), "component", "fuseloop", "volume", id)
		},
	})
	if err != nil {
		return nil, nil, errors.Join(status.Errorf(codes.Internal, "attaching volume %s: %v", id, err), release())
	}
	return att, release, nil
}

// detach takes the loop device down and releases the image, retrying
// while the device's other users let go, up to detachPatience.
func detach(id string, att *fuseloop.Attachment, release func() error) error {
	deadline := time.Now().Add(detachPatience)
	for {
		err := att.Detach()
		if err == nil {
			break
		}
		if !errors.Is(err, fuseloop.ErrBusy) || time.Now().After(deadline) {
			return status.Errorf(codes.FailedPrecondition, "detaching volume %s: %v", id, err)
		}
	}
	if err := release(); err != nil {
		return status.Errorf(codes.Internal, "closing volume %s: %v", id, err)
	}
	// The FUSE mount point, empty once unmounted.
	_ = os.Remove(filepath.Dir(att.File()))
	return nil
}
