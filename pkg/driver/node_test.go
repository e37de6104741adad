package driver

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/csi-qcow2/csi-qcow2/internal/loopdev"
	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
)

// nodeFixture is a driver with its controller and node services, and a
// directory for staging and target paths.
type nodeFixture struct {
	t   testing.TB
	d   *Driver
	c   controllerServer
	n   nodeServer
	dir string
}

func newNodeFixture(t *testing.T) *nodeFixture { return newNodeFixtureAt(t, Config{}) }

func newNodeFixtureAt(t testing.TB, cfg Config) *nodeFixture {
	testtools.NeedRoot(t)
	testtools.Need(t, "mkfs.ext4", "mount", "umount", "blkid")
	d, _ := startDriver(t, cfg)
	f := &nodeFixture{t: t, d: d, c: controllerServer{d: d}, n: nodeServer{d: d}, dir: t.TempDir()}
	// Registered after startDriver's cleanup, so it runs first: whatever
	// a failing test left staged is taken down before the driver stops.
	t.Cleanup(f.noLeftovers)
	return f
}

func (f *nodeFixture) create(name string, c *csi.VolumeCapability) string {
	f.t.Helper()
	v, err := f.c.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: name,
		CapacityRange:      &csi.CapacityRange{RequiredBytes: 64 << 20},
		VolumeCapabilities: []*csi.VolumeCapability{c}})
	if err != nil {
		f.t.Fatal(err)
	}
	return v.Volume.VolumeId
}

func (f *nodeFixture) stage(id, path string, c *csi.VolumeCapability) error {
	_, err := f.n.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: path, VolumeCapability: c})
	return err
}

func (f *nodeFixture) publish(id, staging, target string, c *csi.VolumeCapability, ro bool) error {
	_, err := f.n.NodePublishVolume(context.Background(), &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: c, Readonly: ro})
	return err
}

func (f *nodeFixture) unpublish(id, target string) {
	f.t.Helper()
	if _, err := f.n.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
		f.t.Fatal(err)
	}
}

func (f *nodeFixture) unstage(id, path string) {
	f.t.Helper()
	if _, err := f.n.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: path}); err != nil {
		f.t.Fatal(err)
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// noLeftovers takes down what the test left staged, then checks that no
// mount and no loop binding of the driver's remain.
func (f *nodeFixture) noLeftovers() {
	t := f.t
	for id, s := range f.d.node.staged {
		for target := range s.targets {
			f.n.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
		}
		f.n.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: s.path})
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(mi)) {
		if strings.Contains(line, f.dir) || strings.Contains(line, f.d.cfg.StateDir) {
			t.Errorf("left mounted: %s", line)
		}
	}
	devs, _ := filepath.Glob("/sys/block/loop*")
	for _, dev := range devs {
		if b := loopdev.Backing("/dev/" + filepath.Base(dev)); b != "" && strings.Contains(b, f.d.cfg.StateDir) {
			t.Errorf("%s still bound to %s", filepath.Base(dev), b)
		}
	}
	// Kernel NBD: a device still connected (it has a server pid) to a
	// volume of this node.
	nbds, _ := filepath.Glob("/sys/block/nbd*/backend")
	for _, b := range nbds {
		id, _ := os.ReadFile(b)
		_, err := os.Stat(filepath.Join(filepath.Dir(b), "pid"))
		if err == nil && strings.HasSuffix(strings.TrimSpace(string(id)), "@"+f.d.cfg.NodeID) {
			t.Errorf("%s still connected to volume %s", filepath.Base(filepath.Dir(b)), id)
		}
	}
}

// A file written through a published mount survives unpublish, unstage
// and a second stage; staging is idempotent at one path and refused at
// another.
func TestNodeMountRoundTrip(t *testing.T) {
	f := newNodeFixture(t)
	ctx := context.Background()
	c := mountCap("ext4", csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	id := f.create("pvc-mount", c)
	staging, target := filepath.Join(f.dir, "staging"), filepath.Join(f.dir, "pods", "target")

	must(t, f.stage(id, staging, c))
	must(t, f.stage(id, staging, c))
	if err := f.stage(id, filepath.Join(f.dir, "other"), c); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("staging at a second path: %v, want FailedPrecondition", err)
	}
	if err := f.publish(id, filepath.Join(f.dir, "other"), target, c, false); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("publishing from a path it is not staged at: %v, want FailedPrecondition", err)
	}
	must(t, f.publish(id, staging, target, c, false))
	must(t, f.publish(id, staging, target, c, false))
	if err := f.publish(id, staging, target, c, true); status.Code(err) != codes.AlreadyExists {
		t.Errorf("publishing read-only where it is published read-write: %v, want AlreadyExists", err)
	}
	if _, err := f.n.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("unstaging while published: %v, want FailedPrecondition", err)
	}

	data := bytes.Repeat([]byte("csi-qcow2 "), 100000)
	file := filepath.Join(target, "hello")
	must(t, os.WriteFile(file, data, 0o644))
	fd, err := os.Open(file)
	must(t, err)
	must(t, fd.Sync())
	fd.Close()

	stats, err := f.n.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: target})
	must(t, err)
	if u := stats.Usage; len(u) != 2 || u[0].Unit != csi.VolumeUsage_BYTES || u[0].Total <= 0 || u[0].Used < int64(len(data)) || u[1].Unit != csi.VolumeUsage_INODES || u[1].Used <= 0 {
		t.Errorf("stats of a mounted volume: %v", u)
	}
	if _, err := f.n.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: f.dir}); status.Code(err) != codes.NotFound {
		t.Errorf("stats at a path the volume is not at: %v, want NotFound", err)
	}
	h, err := f.n.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: id})
	must(t, err)
	if h.VolumeHealth.GetVolumeId() != id || len(h.VolumeHealth.GetHealthStatuses()) != 0 {
		t.Errorf("health of a good volume: %v", h.VolumeHealth)
	}

	f.unpublish(id, target)
	f.unstage(id, staging)
	f.unstage(id, staging)
	f.noLeftovers()

	// Read-only publish of the second stage: the file is there, and
	// the target takes no writes.
	must(t, f.stage(id, staging, c))
	must(t, f.publish(id, staging, target, c, true))
	got, err := os.ReadFile(file)
	must(t, err)
	if !bytes.Equal(got, data) {
		t.Errorf("after unstage and stage again the file reads %d bytes, not what was written", len(got))
	}
	if err := os.WriteFile(filepath.Join(target, "x"), nil, 0o644); err == nil {
		t.Error("a read-only publish took a write")
	}
	f.unpublish(id, target)
	f.unstage(id, staging)
	_, err = f.c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
	must(t, err)
}

// Block access: nothing is mounted at the staging path, the device is
// bound onto the target file, and what is written through it reads back,
// also after unstage and stage again.
func TestNodeBlockRoundTrip(t *testing.T) {
	f := newNodeFixture(t)
	ctx := context.Background()
	c := blockCap()
	id := f.create("pvc-block", c)
	staging, target := filepath.Join(f.dir, "staging"), filepath.Join(f.dir, "pods", "dev")
	must(t, os.Mkdir(staging, 0o750))

	roundTrip := func(write bool) {
		t.Helper()
		must(t, f.stage(id, staging, c))
		must(t, f.publish(id, staging, target, c, false))
		must(t, f.publish(id, staging, target, c, false))
		dev, err := os.OpenFile(target, os.O_RDWR, 0)
		must(t, err)
		defer dev.Close()
		want := bytes.Repeat([]byte{0xa5, 0x5a, 1, 2}, 256<<10) // 1 MiB
		const off = 3 << 20
		if write {
			_, err = dev.WriteAt(want, off)
			must(t, err)
			must(t, dev.Sync())
		}
		got := make([]byte, len(want))
		_, err = dev.ReadAt(got, off)
		must(t, err)
		if !bytes.Equal(got, want) {
			t.Error("the device does not read back what was written")
		}
		stats, err := f.n.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: target})
		must(t, err)
		if u := stats.Usage; len(u) != 1 || u[0].Unit != csi.VolumeUsage_BYTES || u[0].Total != 64<<20 {
			t.Errorf("stats of a block volume: %v", u)
		}
		dev.Close()
		f.unpublish(id, target)
		f.unstage(id, staging)
	}
	roundTrip(true)
	f.noLeftovers()
	roundTrip(false)
	if _, err := os.Stat(staging); err != nil {
		t.Errorf("the staging path the CO made is gone: %v", err)
	}
	_, err := f.c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
	must(t, err)
}

// hasCapSysResource reports whether this process may grow a mounted
// ext4 (CanGrowExt4Online).
func hasCapSysResource(t testing.TB) bool {
	ok, err := CanGrowExt4Online()
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

// NodeExpandVolume grows the image, the device and the filesystem of a
// staged and published volume, which goes on reading what it held.
func TestNodeExpand(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    *csi.VolumeCapability
		size int64
	}{
		{"block", blockCap(), 64 << 20},
		{"xfs", mountCap("xfs", csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER), 320 << 20},
		{"ext4", mountCap("ext4", csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER), 64 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "ext4" && !hasCapSysResource(t) {
				t.Skip("ext4 grows online only with CAP_SYS_RESOURCE, which this process lacks")
			}
			if tc.name == "xfs" {
				testtools.Need(t, "mkfs.xfs", "xfs_growfs")
			}
			f := newNodeFixture(t)
			ctx := context.Background()
			v, err := f.c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-" + tc.name,
				CapacityRange:      &csi.CapacityRange{RequiredBytes: tc.size},
				VolumeCapabilities: []*csi.VolumeCapability{tc.c}})
			must(t, err)
			id := v.Volume.VolumeId
			staging, target := filepath.Join(f.dir, "staging"), filepath.Join(f.dir, "target")
			must(t, os.Mkdir(staging, 0o750))
			must(t, f.stage(id, staging, tc.c))
			must(t, f.publish(id, staging, target, tc.c, false))
			data := bytes.Repeat([]byte{7, 8, 9}, 100000)
			file := target
			if !strings.HasPrefix(tc.name, "block") {
				file = filepath.Join(target, "data")
			}
			writeSync(t, file, data)

			want := tc.size + 100<<20
			for range 2 { // the second call finds the size reached
				r, err := f.n.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: id, VolumePath: target,
					CapacityRange: &csi.CapacityRange{RequiredBytes: want}})
				must(t, err)
				if r.CapacityBytes != want {
					t.Errorf("expanded to %d, want %d", r.CapacityBytes, want)
				}
			}
			if got, err := f.d.st.Load().GetVolume(id); err != nil || got.Capacity != want {
				t.Errorf("the store records %d bytes (%v), want %d", got.Capacity, err, want)
			}
			stats, err := f.n.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: target})
			must(t, err)
			switch total := stats.Usage[0].Total; {
			case tc.name == "block" && total != want:
				t.Errorf("the device has %d bytes, want %d", total, want)
			case tc.name != "block" && total <= tc.size:
				t.Errorf("the filesystem has %d bytes, no more than before (%d)", total, tc.size)
			}
			got := make([]byte, len(data))
			rf, err := os.Open(file)
			must(t, err)
			_, err = rf.ReadAt(got, 0)
			rf.Close()
			must(t, err)
			if !bytes.Equal(got, data) {
				t.Error("the volume does not read what it held before it grew")
			}
			if tc.name == "block" {
				// The new end takes writes.
				dev, err := os.OpenFile(target, os.O_RDWR, 0)
				must(t, err)
				_, err = dev.WriteAt(data[:4096], want-4096)
				must(t, err)
				must(t, dev.Sync())
				dev.Close()
			}
			f.unpublish(id, target)
			f.unstage(id, staging)
		})
	}
}

func writeSync(t *testing.T, path string, data []byte) {
	t.Helper()
	w, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	must(t, err)
	_, err = w.WriteAt(data, 0)
	must(t, err)
	must(t, w.Sync())
	must(t, w.Close())
}

// One call at a time works on a volume: the others get Aborted (the CO
// retries), and calls on other volumes go on.
func TestNodeCallsOnOneVolumeAreSerialized(t *testing.T) {
	f := newNodeFixture(t)
	ctx := context.Background()
	c := blockCap()
	id, other := f.create("pvc-a", c), f.create("pvc-b", c)
	staging := filepath.Join(f.dir, "staging")
	unlock, err := f.d.node.lock(id) // a call in progress
	must(t, err)
	if err := f.stage(id, staging, c); status.Code(err) != codes.Aborted {
		t.Errorf("stage during another call: %v, want Aborted", err)
	}
	if err := f.publish(id, staging, filepath.Join(f.dir, "t"), c, false); status.Code(err) != codes.Aborted {
		t.Errorf("publish during another call: %v, want Aborted", err)
	}
	if _, err := f.n.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); status.Code(err) != codes.Aborted {
		t.Errorf("unstage during another call: %v, want Aborted", err)
	}
	must(t, f.stage(other, filepath.Join(f.dir, "staging-b"), c))
	unlock()
	must(t, f.stage(id, staging, c))
	f.unstage(id, staging)
	f.unstage(other, filepath.Join(f.dir, "staging-b"))
}

// What an earlier run of the driver left is taken down: its FUSE mounts
// under <state-dir>/attach when the driver starts, and a filesystem
// still mounted at a staging path over one of its loop devices when the
// CO unstages the volume.
func TestNodeCleansUpAfterAnEarlierRun(t *testing.T) {
	testtools.NeedRoot(t)
	mkfs := testtools.Need(t, "mkfs.ext4")[0]
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	id := "v-0123456789abcdef0123456789abcdef@node-1"
	// A stale FUSE mount point (a tmpfs stands in for the dead FUSE
	// file system) holding the file a loop device is bound to, and a
	// filesystem on that loop device mounted at the staging path.
	attach := filepath.Join(state, attachDir, id)
	must(t, os.MkdirAll(attach, 0o700))
	must(t, unix.Mount("tmpfs", attach, "tmpfs", 0, "size=64m"))
	file := filepath.Join(attach, id)
	must(t, os.WriteFile(file, nil, 0o600))
	must(t, os.Truncate(file, 32<<20))
	if out, err := exec.Command(mkfs, "-q", "-F", file).CombinedOutput(); err != nil {
		t.Fatalf("mkfs: %v\n%s", err, out)
	}
	dev, fd, err := loopdev.Bind(file, loopdev.Options{})
	must(t, err)
	staging := filepath.Join(dir, "staging")
	must(t, os.Mkdir(staging, 0o750))
	if err := unix.Mount(dev, staging, "ext4", 0, ""); err != nil {
		fd.Close()
		t.Fatal(err)
	}
	fd.Close() // the mount holds the device now, as after a crash
	t.Cleanup(func() {
		unix.Unmount(staging, unix.MNT_DETACH)
		unix.Unmount(attach, unix.MNT_DETACH)
	})

	f := newNodeFixtureAt(t, Config{StateDir: state})
	if mounted(t, attach) {
		t.Error("the stale attachment is still mounted after start")
	}
	f.unstage(id, staging)
	if mounted(t, staging) {
		t.Error("the staging path is still mounted after unstage")
	}
	testtools.WaitFor(t, "the loop device clears", func() bool { return loopdev.Backing(dev) != file })
	if _, err := os.Stat(staging); err != nil {
		t.Errorf("the staging path the CO made is gone: %v", err)
	}
}

func mounted(t *testing.T, path string) bool {
	t.Helper()
	mi, err := os.ReadFile("/proc/self/mountinfo")
	must(t, err)
	for line := range strings.Lines(string(mi)) {
		if fields := strings.Fields(line); len(fields) > 4 && fields[4] == path {
			return true
		}
	}
	return false
}

// A volume staged SINGLE_NODE_READER_ONLY is read-only down to the
// device: it reads what was written before and takes no writes.
func TestNodeReaderOnlyBlock(t *testing.T) {
	f := newNodeFixture(t)
	rw := blockCap()
	ro := blockCap()
	ro.AccessMode.Mode = csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY
	id := f.create("pvc-ro", rw)
	staging, target := filepath.Join(f.dir, "staging"), filepath.Join(f.dir, "dev")
	must(t, os.Mkdir(staging, 0o750))
	data := bytes.Repeat([]byte{0x3c}, 1<<20)

	must(t, f.stage(id, staging, rw))
	must(t, f.publish(id, staging, target, rw, false))
	writeSync(t, target, data)
	f.unpublish(id, target)
	f.unstage(id, staging)

	must(t, f.stage(id, staging, ro))
	if err := f.stage(id, staging, rw); status.Code(err) != codes.AlreadyExists {
		t.Errorf("staging writable where it is staged read-only: %v, want AlreadyExists", err)
	}
	must(t, f.publish(id, staging, target, ro, false))
	if w, err := os.OpenFile(target, os.O_WRONLY, 0); err == nil {
		_, err = w.WriteAt(data[:4096], 0)
		w.Close()
		if err == nil {
			t.Error("a reader-only volume took a write")
		}
	}
	got, err := os.ReadFile(target)
	must(t, err)
	if !bytes.Equal(got[:len(data)], data) {
		t.Error("a reader-only volume does not read what was written before")
	}
	f.unpublish(id, target)
	f.unstage(id, staging)
}

// Callers racing on one volume's stage, publish, unpublish, unstage and
// stats get answers or Aborted / FailedPrecondition, never a torn
// state: afterwards the volume unstages, nothing is left, and it can be
// deleted.
func TestNodeRacingCallsOnOneVolume(t *testing.T) {
	f := newNodeFixture(t)
	ctx := context.Background()
	c := blockCap()
	id := f.create("pvc-race", c)
	staging, target := filepath.Join(f.dir, "staging"), filepath.Join(f.dir, "dev")
	must(t, os.Mkdir(staging, 0o750))
	ops := []func() error{
		func() error { return f.stage(id, staging, c) },
		func() error { return f.publish(id, staging, target, c, false) },
		func() error {
			_, err := f.n.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
			return err
		},
		func() error {
			_, err := f.n.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
			return err
		},
		func() error {
			_, err := f.n.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: target})
			return err
		},
	}
	var mu sync.Mutex
	answers := map[string]int{}
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			for range 25 {
				op := rand.IntN(len(ops))
				err := ops[op]()
				mu.Lock()
				answers[fmt.Sprintf("op%d:%s", op, status.Code(err))]++
				mu.Unlock()
				switch status.Code(err) {
				case codes.OK, codes.Aborted, codes.FailedPrecondition, codes.NotFound:
				default:
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range 8 {
		if err := testtools.Within(t, "a racing caller finishes", errs); err != nil {
			t.Error(err)
		}
	}
	t.Logf("answers (ops: stage, publish, unpublish, unstage, stats): %v", answers)
	f.unpublish(id, target)
	f.unstage(id, staging)
	f.noLeftovers()
	_, err := f.c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
	must(t, err)
}
