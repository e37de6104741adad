package driver

import (
	"errors"
	"io/fs"
	"maps"
	"slices"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
	"k8s.io/mount-utils"
)

// A volume an earlier run staged on FUSE is an orphan after a restart
// (readopt.go): its loop device fails every request for good, since the
// FUSE connection under it died with that run, yet the CO still counts it
// staged. Kubernetes then starts the next pod that uses the volume on the
// node with NodePublishVolume alone, at the same staging path. So the
// first stage or publish at the recorded path stages the volume anew:
//
//   - the dead filesystem is unmounted from the staging path (every mount
//     there of the recorded device, or of a loop device an earlier run
//     served the volume on: a second restart may have come first);
//   - a new device is attached and the filesystem on it mounted there
//     (ext4 and xfs replay their journals; xfs with nouuid, as always
//     (mountStaging), which matters here too: the dead superblock, still
//     held by the old pod's bind mount, keeps the UUID registered; it can
//     never write again, so two superblocks never write one volume);
//   - the recorded targets that are still mounted are kept as dead ones
//     (node_publish.go replaces such a bind if the CO publishes there
//     again; unpublish drops it; unstage waits for them), and those that
//     are not (the node rebooted) are forgotten.
//
// Unstage forgets an orphan, a stage at another path replaces it, and
// DeleteVolume refuses one, as it refuses a live stage.

// orphan returns volume id's orphan record, if it is one.
func (n *nodeState) orphan(id string) (nodeRecord, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	r, ok := n.orphans[id]
	return r, ok
}

func (n *nodeState) dropOrphan(id string) {
	n.mu.Lock()
	delete(n.orphans, id)
	n.mu.Unlock()
}

// restage stages orphan o again at its path; the caller holds id's lock.
func (d *Driver) restage(id string, o nodeRecord) (*staged, error) {
	if err := d.unmountDead(id, o); err != nil {
		return nil, err
	}
	want := &staged{path: o.Path, block: o.Block, fsType: o.FsType, flags: slices.Clone(o.Flags), readOnly: o.ReadOnly,
		targets: map[string]bool{}, dead: map[string]bool{}}
	for t, ro := range o.Targets {
		if notMnt, err := mount.IsNotMountPoint(d.mounter, t); err == nil && !notMnt {
			want.targets[t], want.dead[t] = ro, true
		}
	}
	if err := d.stage(id, want); err != nil {
		return nil, err
	}
	d.node.dropOrphan(id)
	klog.InfoS("volume staged by an earlier run on FUSE staged anew", "volume", id, "path", o.Path, "device", want.device(),
		"deadTargets", slices.Sorted(maps.Keys(want.dead)))
	return want, nil
}

// unmountDead unmounts, from orphan o's staging path, every filesystem on
// its recorded device or on a loop device an earlier run served volume id
// on (stacked mounts included).
func (d *Driver) unmountDead(id string, o nodeRecord) error {
	if o.Block {
		return nil
	}
	for range 16 {
		mps, err := d.mounter.List()
		if err != nil {
			return status.Errorf(codes.Internal, "listing mounts: %v", err)
		}
		found := false
		d.node.mu.Lock()
		for _, mp := range mps {
			if mp.Path == o.Path && (mp.Device == o.Device || d.node.stale[mp.Device] == id) {
				found = true
			}
		}
		d.node.mu.Unlock()
		if !found {
			return nil
		}
		if err := d.mounter.Unmount(o.Path); err != nil {
			return status.Errorf(codes.Internal, "unmounting the dead filesystem at %s: %v", o.Path, err)
		}
	}
	return status.Errorf(codes.Internal, "%s: the dead filesystem is still mounted after 16 unmounts", o.Path)
}

// dropDeadTarget unmounts a dead target of s and forgets it, on record.
func (d *Driver) dropDeadTarget(id string, s *staged, target string) error {
	if err := d.mounter.Unmount(target); err != nil && !errors.Is(err, fs.ErrNotExist) {
		if notMnt, cerr := mount.IsNotMountPoint(d.mounter, target); cerr != nil || !notMnt {
			return status.Errorf(codes.Internal, "unmounting the dead filesystem at %s: %v", target, err)
		}
	}
	delete(s.dead, target)
	delete(s.targets, target)
	if err := d.saveStaged(id, s); err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	return nil
}

// forgetOrphan drops orphan id and its record (it was unstaged).
func (d *Driver) forgetOrphan(id string) error {
	if err := d.dropStaged(id); err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	d.node.dropOrphan(id)
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
