package store

import (
	"bytes"
	"context"
	"errors"
	"testing"
)

// A volume grows while served and keeps its data; the size is recorded,
// also when a crash leaves the image grown and the record not (the
// record's intent is settled from the header at the next Open);
// shrinking is refused.
func TestExpandVolume(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := openTestStore(t, root)
	v, err := s.CreateVolume(ctx, VolumeSpec{Name: "grow", Capacity: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	writeVolume(t, s, v.ID, fill(4, 1<<20), 3<<20)
	l, release, err := s.Hold(v.ID)
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.ExpandVolume(v.ID, 8<<20)
	if err != nil || got.Capacity != 8<<20 || l.Size() != 8<<20 {
		t.Fatalf("expand while served: %+v %v, handle size %d", got, err, l.Size())
	}
	if _, err := l.WriteAt(fill(5, 1<<20), 7<<20); err != nil {
		t.Fatal(err)
	}
	release()
	if _, err := s.ExpandVolume(v.ID, 2<<20); !errors.Is(err, ErrRange) {
		t.Errorf("shrink: %v, want ErrRange", err)
	}
	// A crash after the image grew, before the record did.
	l, release, err = s.Hold(v.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.updateVolume(v.ID, func(r *volumeRecord) { r.Pending = &pending{Op: opExpand, Size: 16 << 20} }); err != nil {
		t.Fatal(err)
	}
	if err := l.Resize(16 << 20); err != nil {
		t.Fatal(err)
	}
	release()
	s = openTestStore(t, root)
	if got, _ := s.GetVolume(v.ID); got.Capacity != 16<<20 {
		t.Errorf("after the crash: capacity %d, want %d", got.Capacity, 16<<20)
	}
	if !bytes.Equal(readVolume(t, s, v.ID, 1<<20, 3<<20), fill(4, 1<<20)) || !bytes.Equal(readVolume(t, s, v.ID, 1<<20, 7<<20), fill(5, 1<<20)) {
		t.Error("the grown volume lost data")
	}
}
