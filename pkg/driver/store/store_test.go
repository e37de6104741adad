package store

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

func openTestStore(t *testing.T, root string) *Store {
	t.Helper()
	s, err := Open(Config{Root: root, Node: "node-1", MaxChainDepth: 4, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// writeVolume writes p at off through the volume's served handle.
func writeVolume(t *testing.T, s *Store, id string, p []byte, off int64) {
	t.Helper()
	l, release, err := s.Hold(id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.WriteAt(p, off); err != nil {
		t.Fatal(err)
	}
	if err := l.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := release(); err != nil {
		t.Fatal(err)
	}
}

func readVolume(t *testing.T, s *Store, id string, n int, off int64) []byte {
	t.Helper()
	l, release, err := s.Hold(id)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	p := make([]byte, n)
	if _, err := l.ReadAt(p, off); err != nil {
		t.Fatal(err)
	}
	return p
}

// readSnapshot reads a snapshot through a volume restored from it.
func readSnapshot(t *testing.T, s *Store, snap string, n int, off int64) []byte {
	t.Helper()
	v, err := s.CreateVolume(context.Background(), VolumeSpec{Name: "read-" + snap, Source: &Source{Kind: SourceSnapshot, ID: snap}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := s.DeleteVolume(v.ID); err != nil {
			t.Fatal(err)
		}
	}()
	return readVolume(t, s, v.ID, n, off)
}

func fill(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

// Snapshots of both types, restores and clones read what the volume held
// when they were taken while the volume goes on changing, and still do
// once the volume is deleted; when everything is deleted no layer file
// is left.
func TestSnapshotsRestoresAndClonesKeepTheirData(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := openTestStore(t, root)
	vol, err := s.CreateVolume(ctx, VolumeSpec{Name: "pvc-a", Capacity: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	const n = 64 << 10
	writeVolume(t, s, vol.ID, fill(1, n), 0)
	ext, err := s.CreateSnapshot(ctx, SnapshotSpec{Name: "snap-ext", Volume: vol.ID})
	if err != nil {
		t.Fatal(err)
	}
	writeVolume(t, s, vol.ID, fill(2, n), 0)
	in, err := s.CreateSnapshot(ctx, SnapshotSpec{Name: "snap-int", Volume: vol.ID, Type: TypeInternal})
	if err != nil {
		t.Fatal(err)
	}
	writeVolume(t, s, vol.ID, fill(3, n), 0)
	clone, err := s.CreateVolume(ctx, VolumeSpec{Name: "pvc-clone", Source: &Source{Kind: SourceVolume, ID: vol.ID}})
	if err != nil {
		t.Fatal(err)
	}
	writeVolume(t, s, vol.ID, fill(4, n), 0)
	// More snapshots than the depth cap: the chain is merged meanwhile.
	for i := range 5 {
		if _, err := s.CreateSnapshot(ctx, SnapshotSpec{Name: "more-" + string(rune('a'+i)), Volume: vol.ID}); err != nil {
			t.Fatal(err)
		}
		writeVolume(t, s, vol.ID, fill(byte(10+i), 4096), int64(i+1)*n)
	}
	if got, _ := s.GetVolume(vol.ID); got.Depth > s.MaxChainDepth() {
		t.Errorf("volume chain has %d files, cap %d", got.Depth, s.MaxChainDepth())
	}
	check := func(what string, got []byte, want byte) {
		t.Helper()
		if !bytes.Equal(got, fill(want, n)) {
			t.Errorf("%s: read %d..., want %d", what, got[0], want)
		}
	}
	check("volume", readVolume(t, s, vol.ID, n, 0), 4)
	check("external snapshot", readSnapshot(t, s, ext.ID, n, 0), 1)
	check("internal snapshot", readSnapshot(t, s, in.ID, n, 0), 2)
	check("clone", readVolume(t, s, clone.ID, n, 0), 3)
	if err := s.DeleteVolume(vol.ID); err != nil {
		t.Fatal(err)
	}
	check("external snapshot after its volume went", readSnapshot(t, s, ext.ID, n, 0), 1)
	check("internal snapshot after its volume went", readSnapshot(t, s, in.ID, n, 0), 2)

	// A restart keeps everything as it was.
	s = openTestStore(t, root)
	check("clone after restart", readVolume(t, s, clone.ID, n, 0), 3)
	for _, sn := range s.ListSnapshots() {
		if err := s.DeleteSnapshot(sn.ID); err != nil {
			t.Fatal(err)
		}
	}
	check("clone after the snapshots went", readVolume(t, s, clone.ID, n, 0), 3)
	if err := s.DeleteVolume(clone.ID); err != nil {
		t.Fatal(err)
	}
	left, _ := filepath.Glob(filepath.Join(root, "layers", "*"))
	if len(left) != 0 {
		t.Errorf("layer files left after every object went: %v", left)
	}
}

// Every layer a store leaves checks clean.
func checkLayers(t *testing.T, root string) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(root, "layers", "*.qcow2"))
	for _, f := range files {
		res, err := qcow2.Check(f, qcow2.CheckOptions{})
		if err != nil {
			t.Errorf("%s: %v", f, err)
		} else if !res.Clean() && res.Corruptions+res.CheckErrors > 0 {
			t.Errorf("%s: %+v", f, res)
		}
	}
}

func TestCreateIsIdempotent(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := openTestStore(t, root)
	spec := VolumeSpec{Name: "pvc-b", Capacity: 1 << 20, Params: map[string]string{"a": "b"}}
	a, err := s.CreateVolume(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.CreateVolume(ctx, spec)
	if err != nil || a.ID != b.ID {
		t.Fatalf("retry: %v %v %v", a, b, err)
	}
	spec.Capacity = 2 << 20
	if _, err := s.CreateVolume(ctx, spec); err == nil {
		t.Fatal("same name, other size: no error")
	}
	if _, err := os.Stat(s.lay.volumeRecord(a.ID)); err != nil {
		t.Fatal(err)
	}
	checkLayers(t, root)
}
