package driver

import (
	"maps"
	"slices"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// A volume an earlier run staged on FUSE is an orphan after a restart
// (readopt.go): its loop device fails every request for good, since the
// FUSE connection under it died with that run, yet the CO still counts it
// staged. Kubernetes then starts the next pod that uses the volume on the
// node with NodePublishVolume alone, at the same staging path. So the
// first stage or publish at the recorded path stages the volume anew: the
// dead filesystem is unmounted from the staging path (pods that still
// have it bind-mounted keep failing with EIO until they go, and cannot
// write to the volume any more), a new device is attached and the
// filesystem on it mounted there (ext4 and xfs replay their journals),
// with the recorded access, flags and targets. Unstage forgets an orphan.

// orphan returns volume id's orphan record, if it is one.
func (n *nodeState) orphan(id string) (nodeRecord, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	r, ok := n.orphans[id]
	return r, ok
}

// restage stages orphan o again at its path; the caller holds id's lock.
func (d *Driver) restage(id string, o nodeRecord) (*staged, error) {
	if !o.Block && d.leftByEarlierRun(id, o.Path) {
		if err := unmountIfMounted(d.mounter, o.Path); err != nil {
			return nil, err
		}
	}
	targets := map[string]bool{}
	maps.Copy(targets, o.Targets)
	want := &staged{path: o.Path, block: o.Block, fsType: o.FsType, flags: slices.Clone(o.Flags), readOnly: o.ReadOnly, targets: targets}
	if err := d.stage(id, want); err != nil {
		return nil, err
	}
	d.node.mu.Lock()
	delete(d.node.orphans, id)
	d.node.mu.Unlock()
	klog.InfoS("volume staged by an earlier run on FUSE staged anew", "volume", id, "path", o.Path, "device", want.device())
	return want, nil
}

// forgetOrphan drops orphan id and its record (it was unstaged).
func (d *Driver) forgetOrphan(id string) error {
	if err := d.dropStaged(id); err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	d.node.mu.Lock()
	delete(d.node.orphans, id)
	d.node.mu.Unlock()
	return nil
}

// unpublishOrphan drops target from orphan id's targets, on record too,
// so that a later stage anew does not count it.
func (d *Driver) unpublishOrphan(id, target string) error {
	d.node.mu.Lock()
	o, ok := d.node.orphans[id]
	_, published := o.Targets[target]
	if ok && published {
		o.Targets = maps.Clone(o.Targets)
		delete(o.Targets, target)
		d.node.orphans[id] = o
	}
	d.node.mu.Unlock()
	if !ok || !published {
		return nil
	}
	if err := d.saveRecord(o); err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	return nil
}
