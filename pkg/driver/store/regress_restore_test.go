package store

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
)

// While a restore copies from an internal snapshot of a served volume
// (both ways: what the snapshot holds, read through the live handle, and
// what changed after it, read from the frozen file): a freeze of that
// volume is refused at once (Aborted, the CO retries) instead of waiting
// for the copy and holding back the guest's I/O meanwhile; the guest
// writes; releasing the volume waits for the copy without stopping the
// rest of the store.
func TestRestoreFromInternalBlocksNoIO(t *testing.T) {
	// What is written after the snapshot: more than it holds (4 MiB), so
	// the restore copies what it holds; or less, so it copies the change.
	for name, after := range map[string]int64{"copy": 4<<20 + 4096, "diff": 64 << 10} {
		t.Run(name, func(t *testing.T) { restoreBlocksNoIO(t, after) })
	}
}

func restoreBlocksNoIO(t *testing.T, after int64) {
	ctx := context.Background()
	s := openTestStore(t, t.TempDir())
	v, err := s.CreateVolume(ctx, VolumeSpec{Name: "vol", Capacity: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	other, err := s.CreateVolume(ctx, VolumeSpec{Name: "other", Capacity: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	l, release, err := s.Hold(v.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.WriteAt(fill(7, 4<<20), 0); err != nil {
		t.Fatal(err)
	}
	in, err := s.CreateSnapshot(ctx, SnapshotSpec{Name: "in", Volume: v.ID, Type: TypeInternal})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.WriteAt(fill(9, int(after)), 8<<20-after); err != nil {
		t.Fatal(err)
	}
	copying, resume := make(chan struct{}), make(chan struct{})
	var once sync.Once
	crashPoint = func(step string) {
		if step == "restore copying" {
			once.Do(func() { close(copying); <-resume })
		}
	}
	defer func() { crashPoint = nil }()
	restored := make(chan error, 1)
	go func() {
		_, err := s.CreateVolume(ctx, VolumeSpec{Name: "restored", Source: &Source{Kind: SourceSnapshot, ID: in.ID}})
		restored <- err
	}()
	testtools.Within(t, "the restore to start copying", copying)

	snapped := make(chan error, 1)
	go func() {
		_, err := s.CreateSnapshot(ctx, SnapshotSpec{Name: "ext", Volume: v.ID})
		snapped <- err
	}()
	if err := testtools.Within(t, "a snapshot during the restore to answer", snapped); !errors.Is(err, ErrBusy) {
		t.Errorf("snapshot during the restore: %v, want ErrBusy", err)
	}
	wrote := make(chan error, 1)
	go func() { _, err := l.WriteAt(fill(8, 4096), 6<<20); wrote <- err }()
	if err := testtools.Within(t, "a guest write during the restore", wrote); err != nil {
		t.Fatal(err)
	}
	released := make(chan error, 1)
	go func() { released <- release() }()
	got := make(chan error, 1)
	go func() { _, err := s.GetVolume(other.ID); got <- err }()
	if err := testtools.Within(t, "the store to answer while a release waits for the copy", got); err != nil {
		t.Fatal(err)
	}
	close(resume)
	if err := testtools.Within(t, "the restore", restored); err != nil {
		t.Fatal(err)
	}
	if err := testtools.Within(t, "the release", released); err != nil {
		t.Fatal(err)
	}
	r, err := s.GetVolume(s.VolumeID("restored"))
	if err != nil {
		t.Fatal(err)
	}
	if got := readVolume(t, s, r.ID, 8<<20, 0); !bytes.Equal(got, append(fill(7, 4<<20), make([]byte, 4<<20)...)) {
		t.Error("the restored volume does not read the snapshot's data")
	}
}
