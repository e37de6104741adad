package driver

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/csi-qcow2/csi-qcow2/internal/loopdev"
	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
)

// restageFixture: the driver as a child process (restartFixture) plus a
// mount-access volume; the cleanup lazily unmounts whatever is left under
// dir and the state directory, deepest first.
func restageFixture(t *testing.T, fsType string) (*restartFixture, string, string, *csi.VolumeCapability) {
	testtools.NeedRoot(t)
	testtools.Need(t, "mkfs."+fsType, "mount", "umount", "blkid")
	if os.Getenv("CSI_QCOW2_ATTACH_PATH") == attachNBD {
		t.Skip("FUSE only")
	}
	dir := t.TempDir()
	f := &restartFixture{t: t, state: filepath.Join(dir, "state"), sock: filepath.Join(dir, "csi.sock")}
	conn, err := grpc.NewClient("unix://"+f.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	must(t, err)
	t.Cleanup(func() { conn.Close() })
	f.ident, f.ctl, f.node = csi.NewIdentityClient(conn), csi.NewControllerClient(conn), csi.NewNodeClient(conn)
	t.Cleanup(func() {
		if f.exited != nil {
			select {
			case <-f.exited:
			default:
				f.stop()
			}
		}
		for i := 0; i < 5; i++ {
			var ps []string
			mi, _ := os.ReadFile("/proc/self/mountinfo")
			for line := range strings.Lines(string(mi)) {
				if fs := strings.Fields(line); len(fs) > 4 && strings.HasPrefix(fs[4], dir) {
					ps = append(ps, fs[4])
				}
			}
			sort.Sort(sort.Reverse(sort.StringSlice(ps)))
			for _, p := range ps {
				unix.Unmount(p, unix.MNT_DETACH)
			}
		}
	})
	f.start()
	c := mountCap(fsType, csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	v, err := f.ctl.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: "pvc-restage",
		CapacityRange: &csi.CapacityRange{RequiredBytes: 512 << 20}, VolumeCapabilities: []*csi.VolumeCapability{c}})
	must(t, err)
	return f, dir, v.Volume.VolumeId, c
}

func (f *restartFixture) stageAt(id, staging string, c *csi.VolumeCapability) error {
	_, err := f.node.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: c})
	return err
}

func (f *restartFixture) publishAt(id, staging, target string, c *csi.VolumeCapability) error {
	_, err := f.node.NodePublishVolume(context.Background(), &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: c})
	return err
}

func (f *restartFixture) unpublishAt(id, target string) error {
	_, err := f.node.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
	return err
}

func (f *restartFixture) unstageAt(id, staging string) error {
	_, err := f.node.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
	return err
}

// stagePublish stages the volume at staging (made) and publishes it at t1.
func (f *restartFixture) stagePublish(id, staging, t1 string, c *csi.VolumeCapability) {
	f.t.Helper()
	must(f.t, os.MkdirAll(staging, 0o750))
	must(f.t, f.stageAt(id, staging, c))
	must(f.t, f.publishAt(id, staging, t1, c))
}

// stageWithData is stagePublish, then "acknowledged" written to t1/f and
// synced.
func (f *restartFixture) stageWithData(id, staging, t1 string, c *csi.VolumeCapability) {
	f.t.Helper()
	f.stagePublish(id, staging, t1, c)
	writeFileSynced(f.t, filepath.Join(t1, "f"), "acknowledged")
}

// wantAcknowledged checks that dir/f reads "acknowledged".
func wantAcknowledged(t *testing.T, dir string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "f"))
	if err != nil || string(b) != "acknowledged" {
		t.Errorf("after the restage: %q, %v", b, err)
	}
}

// unpublishUnstage unpublishes the targets, unstages, and checks that
// nothing is left mounted at the staging path.
func (f *restartFixture) unpublishUnstage(id, staging string, targets ...string) {
	f.t.Helper()
	for _, t := range targets {
		must(f.t, f.unpublishAt(id, t))
	}
	must(f.t, f.unstageAt(id, staging))
	if mounted(f.t, staging) {
		f.t.Errorf("the staging path is still mounted after unstage")
	}
}

func writeFileSynced(t *testing.T, path string, data string) {
	t.Helper()
	must(t, os.WriteFile(path, []byte(data), 0o644))
	fd, err := unix.Open(filepath.Dir(path), unix.O_RDONLY, 0)
	must(t, err)
	defer unix.Close(fd)
	must(t, unix.Syncfs(fd))
}

func mountCount(t *testing.T, path string) int {
	t.Helper()
	mi, err := os.ReadFile("/proc/self/mountinfo")
	must(t, err)
	n := 0
	for line := range strings.Lines(string(mi)) {
		if fields := strings.Fields(line); len(fields) > 4 && fields[4] == path {
			n++
		}
	}
	return n
}

// The base case: mount access (ext4 and xfs), the next pod
// publishes at the same staging path with the old pod's target gone.
func TestRestageMount(t *testing.T) {
	for _, fsType := range []string{"ext4", "xfs"} {
		t.Run(fsType, func(t *testing.T) {
			f, dir, id, c := restageFixture(t, fsType)
			staging, t1, t2 := filepath.Join(dir, "staging"), filepath.Join(dir, "t1"), filepath.Join(dir, "t2")
			f.stageWithData(id, staging, t1, c)
			f.kill()
			f.start()
			must(t, f.unpublishAt(id, t1)) // the old pod goes first
			must(t, f.publishAt(id, staging, t2, c))
			wantAcknowledged(t, t2)
			f.unpublishUnstage(id, staging, t2)
		})
	}
}

// The old pod still runs (its target bind-mounts the dead filesystem)
// when the next pod is published: for xfs, the dead superblock keeps the
// filesystem's UUID registered, so the new mount is refused.
func TestRestageXFSWithOldTargetStillMounted(t *testing.T) {
	f, dir, id, c := restageFixture(t, "xfs")
	staging, t1, t2 := filepath.Join(dir, "staging"), filepath.Join(dir, "t1"), filepath.Join(dir, "t2")
	f.stageWithData(id, staging, t1, c)
	f.kill()
	f.start()
	if err := f.publishAt(id, staging, t2, c); err != nil {
		t.Errorf("publish of the next pod while the old pod's target is still mounted: %v", err)
		t.Logf("staging mounted after the failed restage: %v", mounted(t, staging))
	} else {
		wantAcknowledged(t, t2)
	}
}

// After a node reboot (everything unmounted, loop devices gone) the
// record of the FUSE stage survives as an orphan with its targets.
// Kubelet then stages and publishes the same pod's target again (the
// pod UID and so the target path are the same): the publish answers OK
// without mounting anything, and the pod writes into the node's root
// filesystem.
func TestRestageRepublishSameTargetAfterReboot(t *testing.T) {
	f, dir, id, c := restageFixture(t, "ext4")
	staging, t1 := filepath.Join(dir, "staging"), filepath.Join(dir, "t1")
	f.stageWithData(id, staging, t1, c)
	f.kill()
	// "Reboot": every mount goes, the state directory stays.
	must(t, unix.Unmount(t1, unix.MNT_DETACH))
	must(t, unix.Unmount(staging, unix.MNT_DETACH))
	attach, _ := filepath.Glob(filepath.Join(f.state, attachDir, "*"))
	for _, a := range attach {
		unix.Unmount(a, unix.MNT_DETACH)
	}
	f.start()
	must(t, f.stageAt(id, staging, c))
	must(t, f.publishAt(id, staging, t1, c))
	if !mounted(t, t1) {
		t.Errorf("publish at %s answered OK but nothing is mounted there", t1)
	}
	if _, err := os.ReadFile(filepath.Join(t1, "f")); err != nil {
		t.Errorf("the pod does not see its data: %v", err)
	}
}

// The driver restarts, kubelet (restarted too, or requiresRepublish)
// publishes the same pod's target again: OK, but the target still holds
// the dead filesystem.
func TestRestageRepublishSameTargetAfterRestart(t *testing.T) {
	f, dir, id, c := restageFixture(t, "ext4")
	staging, t1 := filepath.Join(dir, "staging"), filepath.Join(dir, "t1")
	f.stageWithData(id, staging, t1, c)
	f.kill()
	f.start()
	must(t, f.stageAt(id, staging, c))
	must(t, f.publishAt(id, staging, t1, c))
	if err := os.WriteFile(filepath.Join(t1, "g"), []byte("x"), 0o644); err != nil {
		t.Logf("write: %v", err)
	}
	fd, err := unix.Open(t1, unix.O_RDONLY, 0)
	must(t, err)
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		t.Errorf("published again at the same target, OK, but the target is still the dead filesystem: syncfs: %v", err)
	}
}

// An orphan kept, then a second restart before anything restaged it:
// the old loop device's backing file no longer lies under the attach
// directory (its FUSE mount was lazily detached by the first restart),
// so the restage does not unmount the dead filesystem at the staging
// path and mounts the new one over it; unstage then leaves the dead
// mount (and its loop device) behind.
func TestRestageAfterASecondRestart(t *testing.T) {
	f, dir, id, c := restageFixture(t, "ext4")
	staging, t1, t2 := filepath.Join(dir, "staging"), filepath.Join(dir, "t1"), filepath.Join(dir, "t2")
	f.stageWithData(id, staging, t1, c)
	f.kill()
	f.start()
	devs, _ := filepath.Glob("/sys/block/loop*")
	for _, d := range devs {
		if b := loopdev.Backing("/dev/" + filepath.Base(d)); b != "" {
			t.Logf("after restart 1: %s backed by %q", filepath.Base(d), b)
		}
	}
	f.kill()
	f.start()
	must(t, f.unpublishAt(id, t1))
	must(t, f.publishAt(id, staging, t2, c))
	if n := mountCount(t, staging); n != 1 {
		t.Errorf("%d mounts at the staging path after the restage, want 1", n)
	}
	wantAcknowledged(t, t2)
	f.unpublishUnstage(id, staging, t2)
}

// A live stage keeps DeleteVolume away (ErrInUse), and so does an
// orphan, which the CO still counts staged: the old pod's unpublish and
// the unstage come first, then the delete succeeds.
func TestRestageDeleteWhileOrphaned(t *testing.T) {
	f, dir, id, c := restageFixture(t, "ext4")
	staging, t1 := filepath.Join(dir, "staging"), filepath.Join(dir, "t1")
	f.stagePublish(id, staging, t1, c)
	if _, err := f.ctl.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: id}); err == nil {
		t.Fatal("deleted while staged")
	}
	f.kill()
	f.start()
	if _, err := f.ctl.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: id}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("DeleteVolume of an orphan (the CO counts it staged): %v, want FailedPrecondition", err)
	}
	must(t, f.unpublishAt(id, t1))
	must(t, f.unstageAt(id, staging))
	if mounted(t, staging) {
		t.Errorf("the staging path is still mounted after unstage")
	}
	if _, err := f.ctl.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Errorf("DeleteVolume after unstage: %v", err)
	}
}
