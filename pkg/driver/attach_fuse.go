package driver

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"k8s.io/klog/v2"

	"github.com/csi-qcow2/csi-qcow2/pkg/nbdattach"
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

// fusePath attaches a volume as a FUSE file under a direct-I/O loop
// device: for kernels without nbd.ko.
type fusePath struct{ stateDir string }

func (fusePath) name() string { return attachFUSE }

func (p fusePath) attach(id string, b nbdattach.Backend) (device, error) {
	dir := filepath.Join(p.stateDir, attachDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("attach directory: %w", err)
	}
	att, err := fuseloop.Attach(b, fuseloop.Options{
		Dir:  filepath.Join(dir, id),
		Name: id,
		Logf: func(format string, args ...any) {
			klog.InfoS(fmt.Sprintf(format, args...), "component", "fuseloop", "volume", id)
		},
	})
	if err != nil {
		return nil, err
	}
	return fuseDevice{att}, nil
}

type fuseDevice struct{ att *fuseloop.Attachment }

func (f fuseDevice) Path() string  { return f.att.Device() }
func (f fuseDevice) Resize() error { return f.att.Resize() }

// Detach retries while the loop device's other users let go, up to
// detachPatience, then removes the FUSE mount point (empty once
// unmounted).
//
// A write-back that failed (fuseloop.ErrWriteBack: what users left in the
// device's page cache is lost) with the teardown done is a lostWrites.
func (f fuseDevice) Detach() error {
	deadline := time.Now().Add(detachPatience)
	for {
		err := f.att.Detach()
		if err == nil {
			break
		}
		if f.att.Detached() {
			_ = os.Remove(filepath.Dir(f.att.File()))
			return lostWrites{err}
		}
		if !errors.Is(err, fuseloop.ErrBusy) || time.Now().After(deadline) {
			return err
		}
	}
	_ = os.Remove(filepath.Dir(f.att.File()))
	return nil
}

// lostWrites: the device is gone, but writes its users left unsynced could
// not all reach the volume.
type lostWrites struct{ err error }

func (l lostWrites) Error() string { return l.err.Error() }
func (l lostWrites) Unwrap() error { return l.err }
