package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

const testSHA = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// A retried CreateVolume from a golden image (same name, same spec)
// returns the volume (the record names the image as its source).
func TestImageVolumeRetryIsIdempotent(t *testing.T) {
	root := t.TempDir()
	var s *Store
	s, err := Open(Config{Root: root, Node: "node-1", MaxChainDepth: 4, Logf: t.Logf,
		ImportImage: func(ctx context.Context, url, sha string) error {
			p := filepath.Join(root, "images", sha+".qcow2")
			if _, err := os.Stat(p); err == nil {
				return nil
			}
			return qcow2.Create(p, qcow2.CreateOptions{Size: 4 << 20})
		}})
	if err != nil {
		t.Fatal(err)
	}
	spec := VolumeSpec{Name: "pvc-img", Params: map[string]string{"imageURL": "x", "imageSHA256": testSHA},
		Image: &ImageRef{URL: "x", SHA256: testSHA}}
	if _, err := s.CreateVolume(context.Background(), spec); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateVolume(context.Background(), spec); err != nil {
		t.Fatalf("retry of the same image volume: %v", err)
	}
}

// A clone that cannot be made (here: a capacity below the source's) is
// refused before the source is frozen, so retries do not grow the
// source's chain.
func TestFailedClonesDoNotGrowTheSource(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t, t.TempDir())
	v, err := s.CreateVolume(ctx, VolumeSpec{Name: "src", Capacity: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	writeVolume(t, s, v.ID, fill(7, 4096), 0)
	for i := 0; i < 70; i++ {
		_, err := s.CreateVolume(ctx, VolumeSpec{Name: "clone", Capacity: 1 << 20, Source: &Source{Kind: SourceVolume, ID: v.ID}})
		if !errors.Is(err, ErrRange) {
			t.Logf("try %d: %v", i, err)
			break
		}
	}
	got, _ := s.GetVolume(v.ID)
	t.Logf("source chain depth now %d (cap %d)", got.Depth, s.MaxChainDepth())
	if got.Depth > s.MaxChainDepth() {
		t.Errorf("failed clone retries left the source with %d files, cap %d", got.Depth, s.MaxChainDepth())
	}
	if _, release, err := s.Hold(v.ID); err != nil {
		t.Errorf("source volume no longer opens: %v", err)
	} else {
		release()
	}
}

// A freeze whose settle fails (here a snapshot record write fails in
// moveInternalSnapshots) leaves Pending in the volume's record; Hold
// settles it before opening, and the fault noted meanwhile clears once
// the volume opens.
func TestHoldSettlesAnUnsettledFreeze(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := openTestStore(t, root)
	v, err := s.CreateVolume(ctx, VolumeSpec{Name: "vol", Capacity: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	in, err := s.CreateSnapshot(ctx, SnapshotSpec{Name: "in", Volume: v.ID, Type: TypeInternal})
	if err != nil {
		t.Fatal(err)
	}
	// Make the next write of the internal snapshot's record fail.
	rec := s.lay.snapshotRecord(in.ID)
	b, _ := os.ReadFile(rec)
	os.Remove(rec)
	os.MkdirAll(filepath.Join(rec, "x"), 0o700)
	if _, err := s.CreateSnapshot(ctx, SnapshotSpec{Name: "ext", Volume: v.ID}); err == nil {
		t.Fatal("expected the settle to fail")
	} else {
		t.Logf("CreateSnapshot: %v", err)
	}
	os.RemoveAll(rec)
	os.WriteFile(rec, b, 0o600)
	_, release, err := s.Hold(v.ID)
	if err != nil {
		t.Errorf("Hold after a failed settle: %v", err)
	} else {
		release()
	}
	// Anything that settles (a snapshot) fixes the chain...
	if _, err := s.CreateSnapshot(ctx, SnapshotSpec{Name: "ext2", Volume: v.ID}); err != nil {
		t.Fatal(err)
	}
	if _, release, err := s.Hold(v.ID); err != nil {
		t.Fatal(err)
	} else {
		release()
	}
	// ...but the health stays abnormal.
	c, _ := s.Health(v.ID)
	if c.Abnormal {
		t.Errorf("health after the volume opens again: %+v", c)
	}
}

// One top that does not open (a crash left an internal snapshot being
// made in it, and its corrupt bit is set) does not stop Open: the other
// volumes are served and that one's health says why.
func TestOneBadTopDoesNotStopOpen(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := openTestStore(t, root)
	v, err := s.CreateVolume(ctx, VolumeSpec{Name: "vol", Capacity: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateVolume(ctx, VolumeSpec{Name: "other", Capacity: 8 << 20}); err != nil {
		t.Fatal(err)
	}
	// Crash right after the intent of an internal snapshot was written.
	s.mu.Lock()
	r := s.volumes[v.ID]
	chain := r.Chain.clone()
	chain.Layers = append(chain.Layers, r.Top)
	err = s.saveSnapshot(&snapshotRecord{ID: s.SnapshotID("in"), Name: "in", State: stateCreating,
		Type: TypeInternal, Volume: v.ID, Size: r.Capacity, Chain: chain, Internal: "csi-x"})
	top := s.lay.layerPath(r.Top)
	s.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	// The top carries the corrupt bit (rule 4 set it before the crash).
	patchFile(t, top, func(b []byte) { b[79] |= 2 })
	if _, err := Open(Config{Root: root, Node: "node-1", MaxChainDepth: 4}); err != nil {
		t.Errorf("Open of the whole store fails for one volume: %v", err)
	}
}

// A crash after a freeze of a top that holds an internal snapshot: Open
// settles the freeze, the internal snapshot follows its file into the
// frozen layer, and everything reads back.
func TestCrashAfterFreezeWithInternalSnapshot(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := openTestStore(t, root)
	v, _ := s.CreateVolume(ctx, VolumeSpec{Name: "vol", Capacity: 8 << 20})
	writeVolume(t, s, v.ID, fill(1, 65536), 0)
	in, err := s.CreateSnapshot(ctx, SnapshotSpec{Name: "in", Volume: v.ID, Type: TypeInternal})
	if err != nil {
		t.Fatal(err)
	}
	writeVolume(t, s, v.ID, fill(2, 65536), 0)
	// by hand: intent, freeze, crash before settle
	layer := newLayerID()
	if err := s.updateVolume(v.ID, func(r *volumeRecord) { r.Pending = &pending{Op: opFreeze, Layer: layer} }); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	vr := s.volumes[v.ID]
	s.mu.Unlock()
	if err := s.withLive(vr, func(l *qcow2.Live) error { return l.Freeze(s.lay.layerPath(layer)) }); err != nil {
		t.Fatal(err)
	}
	s = openTestStore(t, root)
	if got := readSnapshot(t, s, in.ID, 65536, 0); got[0] != 1 || got[65535] != 1 {
		t.Errorf("internal snapshot after recovered freeze reads %d", got[0])
	}
	if got := readVolume(t, s, v.ID, 65536, 0); got[0] != 2 {
		t.Errorf("volume reads %d", got[0])
	}
	// crash during collapse after the switch
	for i := 0; i < 6; i++ {
		if _, err := s.CreateSnapshot(ctx, SnapshotSpec{Name: "e" + strings.Repeat("x", i), Volume: v.ID}); err != nil {
			t.Fatal(err)
		}
	}
	writeVolume(t, s, v.ID, fill(3, 4096), 1<<20)
	for i := 0; i < 4; i++ {
		layer := newLayerID()
		s.updateVolume(v.ID, func(r *volumeRecord) { r.Pending = &pending{Op: opFreeze, Layer: layer} })
		s.mu.Lock()
		vr = s.volumes[v.ID]
		s.mu.Unlock()
		s.withLive(vr, func(l *qcow2.Live) error { return l.Freeze(s.lay.layerPath(layer)) })
		if err := s.settlePending(v.ID); err != nil {
			t.Fatal(err)
		}
	}
	s.mu.Lock()
	vr = s.volumes[v.ID]
	s.mu.Unlock()
	t.Logf("depth before collapse %d", vr.Chain.depth()+1)
	keep := 2
	s.updateVolume(v.ID, func(r *volumeRecord) { r.Pending = &pending{Op: opCollapse, Keep: keep} })
	if _, err := s.collapseLive(ctx, vr, s.files(vr.Chain)[keep-1]); err != nil {
		t.Fatal(err)
	}
	s = openTestStore(t, root)
	g, _ := s.GetVolume(v.ID)
	t.Logf("depth after recovered collapse %d", g.Depth)
	if g.Depth != keep+1 {
		t.Errorf("depth %d", g.Depth)
	}
	if got := readVolume(t, s, v.ID, 4096, 1<<20); got[0] != 3 {
		t.Errorf("volume reads %d after collapse", got[0])
	}
	if got := readVolume(t, s, v.ID, 4096, 0); got[0] != 2 {
		t.Errorf("volume reads %d after collapse", got[0])
	}
	if got := readSnapshot(t, s, in.ID, 65536, 0); got[0] != 1 {
		t.Errorf("internal snapshot reads %d", got[0])
	}
	checkLayers(t, root)
}
