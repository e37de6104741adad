package store

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// Failed clones leave the source as it was: it can be snapshotted.
func TestSourceSnapshotsAfterFailedClones(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t, t.TempDir())
	v, _ := s.CreateVolume(ctx, VolumeSpec{Name: "src", Capacity: 8 << 20})
	for i := 0; i < 70; i++ {
		_, err := s.CreateVolume(ctx, VolumeSpec{Name: "clone", Capacity: 1 << 20, Source: &Source{Kind: SourceVolume, ID: v.ID}})
		if !errors.Is(err, ErrRange) {
			break
		}
	}
	if _, err := s.CreateSnapshot(ctx, SnapshotSpec{Name: "snap", Volume: v.ID}); err != nil {
		t.Errorf("snapshot of the source after failed clones: %.200v", err)
	}
}

// Internal snapshots of a served volume: restore while held, then after a
// live freeze moved the snapshot into a frozen layer (still held).
func TestInternalSnapshotsOfAServedVolume(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := openTestStore(t, root)
	v, _ := s.CreateVolume(ctx, VolumeSpec{Name: "vol", Capacity: 8 << 20})
	l, release, err := s.Hold(v.ID)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	w := func(b byte, off int64) {
		if _, err := l.WriteAt(fill(b, 65536), off); err != nil {
			t.Fatal(err)
		}
	}
	w(1, 0)
	w(1, 1<<20)
	in, err := s.CreateSnapshot(ctx, SnapshotSpec{Name: "in", Volume: v.ID, Type: TypeInternal})
	if err != nil {
		t.Fatal(err)
	}
	w(2, 0)
	if err := l.WriteZeroes(1<<20, 65536, false); err != nil {
		t.Fatal(err)
	}
	chk := func(what string) {
		r, err := s.CreateVolume(ctx, VolumeSpec{Name: "r-" + what, Source: &Source{Kind: SourceSnapshot, ID: in.ID}})
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if got := readVolume(t, s, r.ID, 65536, 0); !bytes.Equal(got, fill(1, 65536)) {
			t.Errorf("%s: reads %d at 0", what, got[0])
		}
		if got := readVolume(t, s, r.ID, 65536, 1<<20); !bytes.Equal(got, fill(1, 65536)) {
			t.Errorf("%s: reads %d at 1M", what, got[0])
		}
		s.DeleteVolume(r.ID)
	}
	chk("held")
	c, err := s.CreateVolume(ctx, VolumeSpec{Name: "clone", Source: &Source{Kind: SourceVolume, ID: v.ID}})
	if err != nil {
		t.Fatal(err)
	}
	w(3, 0)
	chk("after-freeze")
	if got := readVolume(t, s, c.ID, 65536, 0); got[0] != 2 {
		t.Errorf("clone reads %d", got[0])
	}
	p := make([]byte, 65536)
	l.ReadAt(p, 0)
	if p[0] != 3 {
		t.Errorf("volume reads %d", p[0])
	}
	// internal snapshot deleted while held: dropInternal
	in2, _ := s.CreateSnapshot(ctx, SnapshotSpec{Name: "in2", Volume: v.ID, Type: TypeInternal})
	if err := s.DeleteSnapshot(in2.ID); err != nil {
		t.Fatal(err)
	}
	l.WithImage(func(img *qcow2.Image) error {
		list, _ := img.Snapshots()
		if len(list) != 0 {
			t.Errorf("top still holds %d internal snapshots", len(list))
		}
		return nil
	})
}
