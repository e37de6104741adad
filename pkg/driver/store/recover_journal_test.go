package store

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// A top a killed process left with an unapplied write journal is applied
// when the store opens, so that QEMU (which refuses the journal's
// incompatible feature bit) and a check read it before anything serves
// the volume again.
// The kill is simulated by saving the top and its journal while the
// write is journaled and putting them back after the store closed.
// (TestKillDuringOperations with seed 17778343941767879173 left such a
// top at its end.)
func TestOpenAppliesAPendingJournal(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := openTestStore(t, root)
	v, err := s.CreateVolume(ctx, VolumeSpec{Name: "vol", Capacity: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	// The journal takes writes into clusters of an overlay: the top gets
	// a frozen layer under it first.
	writeVolume(t, s, v.ID, fill(0x11, 4<<20), 0)
	if _, err := s.CreateSnapshot(ctx, SnapshotSpec{Name: "below", Volume: v.ID}); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	top := s.lay.layerPath(s.volumes[v.ID].Top)
	s.mu.Unlock()
	l, release, err := s.Hold(v.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.WriteAt(fill(0x6b, 1<<20), 1<<20); err != nil {
		t.Fatal(err)
	}
	saved := map[string][]byte{}
	for _, p := range []string{top, qcow2.JournalPath(top)} {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatalf("the journaled write left no %s: %v", p, err)
		}
		saved[p] = b
	}
	if err := release(); err != nil {
		t.Fatal(err)
	}
	for p, b := range saved {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := qcow2.Check(top, qcow2.CheckOptions{}); !errors.Is(err, qcow2.ErrJournalPending) {
		t.Fatalf("check of the saved top: %v, want ErrJournalPending (the simulation has no pending journal)", err)
	}

	s = openTestStore(t, root)
	if _, err := os.Stat(qcow2.JournalPath(top)); err == nil {
		t.Error("the journal is still there after Open")
	}
	if res, err := qcow2.Check(top, qcow2.CheckOptions{}); err != nil || res.Corruptions+res.CheckErrors > 0 {
		t.Fatalf("check of the top after Open: %+v %v", res, err)
	}
	if got := readVolume(t, s, v.ID, 1<<20, 1<<20); !bytes.Equal(got, fill(0x6b, 1<<20)) {
		t.Error("the journaled write is lost")
	}
	if c, err := s.Health(v.ID); err != nil || c.Abnormal {
		t.Errorf("health after Open: %+v %v", c, err)
	}
}
