package store

import (
	"context"
	"encoding/binary"
	"os"
	"testing"
)

// Health names each cause: a missing layer file, the corrupt bit, a layer
// a check finds corrupt; a well volume is not abnormal.
func TestHealthCauses(t *testing.T) {
	ctx := context.Background()
	s := openTestStore(t, t.TempDir())
	mk := func(name string) *volumeRecord {
		v, err := s.CreateVolume(ctx, VolumeSpec{Name: name, Capacity: 4 << 20})
		if err != nil {
			t.Fatal(err)
		}
		writeVolume(t, s, v.ID, fill(3, 1<<20), 0)
		if _, err := s.CreateSnapshot(ctx, SnapshotSpec{Name: "snap-" + name, Volume: v.ID}); err != nil {
			t.Fatal(err)
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.volumes[v.ID]
	}
	well, missing, corrupt, damaged := mk("well"), mk("missing"), mk("corrupt"), mk("damaged")
	if err := os.Remove(s.lay.layerPath(missing.Chain.Layers[0])); err != nil {
		t.Fatal(err)
	}
	patchFile(t, s.lay.layerPath(corrupt.Top), func(b []byte) {
		binary.BigEndian.PutUint64(b[72:], binary.BigEndian.Uint64(b[72:])|2) // the corrupt bit
	})
	patchFile(t, s.lay.layerPath(damaged.Chain.Layers[0]), func(b []byte) {
		// Zero the first refcount block: every cluster it counts is then
		// referenced with refcount 0.
		table := binary.BigEndian.Uint64(b[48:])
		block := binary.BigEndian.Uint64(b[table:])
		clear(b[block : block+64<<10])
	})
	for _, tc := range []struct {
		v      *volumeRecord
		reason string
	}{{well, ""}, {missing, ReasonMissingLayer}, {corrupt, ReasonCorrupt}, {damaged, ReasonCheckFailed}} {
		if _, err := s.CheckVolume(ctx, tc.v.ID); err != nil {
			t.Fatal(err)
		}
		c, err := s.Health(tc.v.ID)
		if err != nil {
			t.Fatal(err)
		}
		if c.Abnormal != (tc.reason != "") || c.Reason != tc.reason {
			t.Errorf("%s: %+v, want reason %q", tc.v.Name, c, tc.reason)
		}
	}
}

func patchFile(t *testing.T, path string, fn func(b []byte)) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	fn(b)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
