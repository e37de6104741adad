package driver

import (
	"errors"
	"fmt"

	"k8s.io/klog/v2"

	"github.com/csi-qcow2/csi-qcow2/internal/qcow2nbd"
	"github.com/csi-qcow2/csi-qcow2/pkg/driver/store"
)

// readopt serves again, before any node call is answered, the volumes an
// earlier run of the driver had staged (their records, node_record.go).
//
// On kernel NBD the device outlives its server: the kernel holds the
// device's I/O while every connection is dead, for the dead-connection
// timeout (nbdattach.DefaultDeadConnTimeout), waiting for a RECONFIGURE.
// The volume is opened again (the engine replays its write journal) and
// attached under the same backend identifier, which nbdattach turns into
// that RECONFIGURE: the held I/O completes, the mounts on the device
// never notice. A device the kernel no longer has (the node rebooted) is
// not taken over: the record goes, so that the CO's next NodeStageVolume
// stages and mounts for real.
//
// On the FUSE path the connection died with the process and cannot be
// taken over (docs/fuseloop.md, "Restart"): the volume is kept as an
// orphan, its record too, and the next stage or publish at its staging
// path stages it anew (node_restage.go); the stale mounts are handled as
// before (cleanStaleAttachments, leftByEarlierRun).
func (d *Driver) readopt(st *store.Store) {
	recs, err := d.stagedRecords()
	if err != nil {
		klog.ErrorS(err, "reading the staged volumes of an earlier run")
		return
	}
	for _, r := range recs {
		if r.Attach == attachFUSE {
			if _, err := st.GetVolume(r.Volume); err != nil {
				// Deleted since: nothing to stage anew.
				klog.InfoS("record of a staged volume that is gone dropped", "volume", r.Volume, "error", err)
				if err := d.dropStaged(r.Volume); err != nil {
					klog.ErrorS(err, "volume", r.Volume)
				}
				continue
			}
			klog.InfoS("volume staged on FUSE by an earlier run: its old device fails I/O; the next stage or publish stages it anew", "volume", r.Volume, "device", r.Device, "path", r.Path)
			d.node.mu.Lock()
			d.node.orphans[r.Volume] = r
			d.node.mu.Unlock()
			continue
		}
		if err := d.readoptOne(st, r); err != nil {
			klog.ErrorS(err, "staged volume of an earlier run not taken over", "volume", r.Volume, "attach", r.Attach, "device", r.Device)
			if err := d.dropStaged(r.Volume); err != nil {
				klog.ErrorS(err, "volume", r.Volume)
			}
		}
	}
}

var errNotReattached = errors.New("the kernel no longer has the device")

func (d *Driver) readoptOne(st *store.Store, r nodeRecord) error {
	if r.Attach != attachNBD || d.path.name() != attachNBD {
		return fmt.Errorf("staged on %s, and this run attaches on %s", r.Attach, d.path.name())
	}
	live, release, err := st.Hold(r.Volume)
	if err != nil {
		return err
	}
	watch := &ioWatch{Backend: qcow2nbd.New(live, r.ReadOnly)}
	dev, err := d.path.attach(r.Volume, watch)
	if err != nil {
		return errors.Join(err, release())
	}
	if nd, ok := dev.(*nbdDevice); !ok || !nd.att.Reattached || nd.Path() != r.Device {
		return errors.Join(errNotReattached, dev.Detach(), release())
	}
	targets := r.Targets
	if targets == nil {
		targets = map[string]bool{}
	}
	d.node.put(r.Volume, &staged{path: r.Path, block: r.Block, fsType: r.FsType, flags: r.Flags,
		readOnly: r.ReadOnly, dev: dev, watch: watch, release: release, targets: targets})
	klog.InfoS("staged volume of an earlier run taken over", "volume", r.Volume, "device", r.Device, "targets", len(targets))
	return nil
}
