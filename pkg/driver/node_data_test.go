package driver

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
)

// What is written through a mounted filesystem is exactly what a restore
// of each snapshot type and a clone show, after the source changed; and
// fstrim in the volume gives its freed blocks back to the store (the
// volume's top shrinks). On the host this runs on the FUSE path, in the
// VM test bed on kernel NBD.
func TestNodeDataThroughSnapshotsAndClones(t *testing.T) {
	fstrim := testtools.Need(t, "fstrim")[0]
	f := newNodeFixture(t)
	ctx := context.Background()
	c := mountCap("ext4", csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	v, err := f.c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-data",
		CapacityRange: &csi.CapacityRange{RequiredBytes: 128 << 20}, VolumeCapabilities: []*csi.VolumeCapability{c}})
	must(t, err)
	id := v.Volume.VolumeId
	dir := f.attachAt(t, id, "src", c)

	rng := rand.New(rand.NewPCG(1, 2))
	data := make([]byte, 8<<20)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	writeSync(t, filepath.Join(dir, "data.bin"), data)
	syncfs(t, dir)

	var sources []*csi.VolumeContentSource
	for _, typ := range []string{"external", "internal"} {
		sn, err := f.c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap-" + typ, SourceVolumeId: id,
			Parameters: map[string]string{"type": typ}})
		must(t, err)
		sources = append(sources, &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: sn.Snapshot.SnapshotId}}})
	}
	clone, err := f.c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "clone", VolumeCapabilities: []*csi.VolumeCapability{c},
		VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
			Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: id}}}})
	must(t, err)
	// The source changes after the snapshots and the clone were taken.
	writeSync(t, filepath.Join(dir, "data.bin"), bytes.Repeat([]byte{0xee}, len(data)))
	syncfs(t, dir)

	ids := map[string]string{"clone": clone.Volume.VolumeId}
	for i, src := range sources {
		name := []string{"restored-external", "restored-internal"}[i]
		r, err := f.c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, VolumeContentSource: src,
			VolumeCapabilities: []*csi.VolumeCapability{c}})
		must(t, err)
		ids[name] = r.Volume.VolumeId
	}
	for name, vid := range ids {
		got, err := os.ReadFile(filepath.Join(f.attachAt(t, vid, name, c), "data.bin"))
		must(t, err)
		if !bytes.Equal(got, data) {
			t.Errorf("%s does not read what the source held when it was taken", name)
		}
	}

	// fstrim: a 48 MiB file written and removed comes back to the store.
	big := filepath.Join(dir, "big.bin")
	writeSync(t, big, bytes.Repeat([]byte{0x77}, 48<<20))
	syncfs(t, dir)
	before := f.topBytes(t, id)
	must(t, os.Remove(big))
	syncfs(t, dir)
	if out, err := exec.Command(fstrim, "-v", dir).CombinedOutput(); err != nil {
		t.Fatalf("fstrim: %v\n%s", err, out)
	}
	after := f.topBytes(t, id)
	t.Logf("the volume's top: %d bytes before fstrim, %d after", before, after)
	if before-after < 32<<20 {
		t.Errorf("fstrim gave back %d bytes of a removed 48 MiB file, want at least 32 MiB", before-after)
	}
}

// attachAt stages and publishes volume id under f.dir/name and returns
// the target; detachAt, or else the fixture's cleanup, takes it down.
func (f *nodeFixture) attachAt(t testing.TB, id, name string, c *csi.VolumeCapability) string {
	t.Helper()
	staging, target := filepath.Join(f.dir, name, "staging"), filepath.Join(f.dir, name, "target")
	must(t, os.MkdirAll(staging, 0o750))
	must(t, f.stage(id, staging, c))
	must(t, f.publish(id, staging, target, c, false))
	return target
}

// detachAt unpublishes and unstages what attachAt(id, name) made.
func (f *nodeFixture) detachAt(id, name string) {
	f.unpublish(id, filepath.Join(f.dir, name, "target"))
	f.unstage(id, filepath.Join(f.dir, name, "staging"))
}

// topBytes is what volume id's top file occupies in the store.
func (f *nodeFixture) topBytes(t *testing.T, id string) int64 {
	t.Helper()
	v, err := f.d.st.Load().GetVolume(id)
	must(t, err)
	return v.TopBytes
}

// syncfs flushes the filesystem holding path to its device.
func syncfs(t *testing.T, path string) {
	t.Helper()
	d, err := os.Open(path)
	must(t, err)
	defer d.Close()
	must(t, unixSyncfs(int(d.Fd())))
}

func unixSyncfs(fd int) error { return unix.Syncfs(fd) }

// A clone and a restore of an xfs volume carry its filesystem UUID; they
// stage on the same node while the source is mounted (xfs would refuse a
// duplicate UUID without nouuid) and read what the source held.
func TestNodeXFSCopiesBesideTheirSource(t *testing.T) {
	f := newNodeFixture(t)
	testtools.Need(t, "mkfs.xfs")
	ctx := context.Background()
	c := mountCap("xfs", csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	v, err := f.c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-xfs",
		CapacityRange: &csi.CapacityRange{RequiredBytes: 512 << 20}, VolumeCapabilities: []*csi.VolumeCapability{c}})
	must(t, err)
	id := v.Volume.VolumeId
	dir := f.attachAt(t, id, "src", c)
	want := []byte("held by the source when it was copied")
	writeSync(t, filepath.Join(dir, "f"), want)
	syncfs(t, dir)
	sn, err := f.c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap-xfs", SourceVolumeId: id})
	must(t, err)
	sources := map[string]*csi.VolumeContentSource{
		"clone":   {Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: id}}},
		"restore": {Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: sn.Snapshot.SnapshotId}}},
	}
	for name, src := range sources {
		r, err := f.c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, VolumeContentSource: src, VolumeCapabilities: []*csi.VolumeCapability{c}})
		must(t, err)
		got, err := os.ReadFile(filepath.Join(f.attachAt(t, r.Volume.VolumeId, name, c), "f"))
		must(t, err)
		if !bytes.Equal(got, want) {
			t.Errorf("%s reads %q", name, got)
		}
	}
}
