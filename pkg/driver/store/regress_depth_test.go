package store

import (
	"context"
	"fmt"
	"testing"
)

// A restore of a snapshot of a restore of ... would be one file deeper
// each generation: past the cap, the new volume's top takes the layers
// over.
func TestRestoreGenerationsStayUnderTheCap(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t, t.TempDir())
	v, _ := s.CreateVolume(ctx, VolumeSpec{Name: "g0", Capacity: 8 << 20})
	id := v.ID
	for g := 1; g <= 70; g++ {
		sn, err := s.CreateSnapshot(ctx, SnapshotSpec{Name: fmt.Sprint("s", g), Volume: id})
		if err != nil {
			t.Fatalf("generation %d snapshot: %.300v", g, err)
		}
		r, err := s.CreateVolume(ctx, VolumeSpec{Name: fmt.Sprint("g", g), Source: &Source{Kind: SourceSnapshot, ID: sn.ID}})
		if err != nil {
			t.Fatalf("generation %d restore: %.300v", g, err)
		}
		if r.Depth > s.MaxChainDepth()+1 {
			t.Errorf("generation %d: restored volume has %d files, cap %d", g, r.Depth, s.MaxChainDepth())
		}
		if _, rel, err := s.Hold(r.ID); err != nil {
			t.Fatalf("generation %d (depth %d) does not open: %.200v", g, r.Depth, err)
		} else {
			rel()
		}
		id = r.ID
	}
}

// The same for clones of clones.
func TestCloneGenerationsStayUnderTheCap(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t, t.TempDir())
	v, _ := s.CreateVolume(ctx, VolumeSpec{Name: "c0", Capacity: 8 << 20})
	id := v.ID
	for g := 1; g <= 12; g++ {
		r, err := s.CreateVolume(ctx, VolumeSpec{Name: fmt.Sprint("c", g), Source: &Source{Kind: SourceVolume, ID: id}})
		if err != nil {
			t.Fatalf("generation %d clone: %.300v", g, err)
		}
		if r.Depth > s.MaxChainDepth()+1 {
			t.Errorf("generation %d: clone has %d files, cap %d", g, r.Depth, s.MaxChainDepth())
		}
		id = r.ID
	}
}

// A merge is not cancelled with the RPC that started it: a CO deadline
// (here a cancelled context) must not leave the chain uncapped.
func TestMergeOutlivesTheRPCDeadline(t *testing.T) {
	s := openTestStore(t, t.TempDir())
	v, _ := s.CreateVolume(context.Background(), VolumeSpec{Name: "v", Capacity: 8 << 20})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for i := 0; i < 70; i++ {
		if _, err := s.CreateSnapshot(ctx, SnapshotSpec{Name: fmt.Sprint("s", i), Volume: v.ID}); err != nil {
			got, _ := s.GetVolume(v.ID)
			t.Fatalf("snapshot %d (depth %d): %.150v", i, got.Depth, err)
		}
	}
}
