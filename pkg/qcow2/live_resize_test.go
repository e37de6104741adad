package qcow2_test

import (
	"bytes"
	"sync"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// A live volume grows while another goroutine writes to it: the writes
// all land, the new range reads as zeros until written, and a later
// Freeze and a reopen keep the new size.
func TestLiveResize(t *testing.T) {
	t.Parallel()
	s := newFreezeStore(t, 1<<20, qcow2.CreateOptions{ClusterSize: 4096})
	live := s.open(t)
	before := snapReadAll(t, live, 1<<20)

	var wg sync.WaitGroup
	wg.Add(1)
	stamp := bytes.Repeat([]byte{0xa5}, 4096)
	go func() {
		defer wg.Done()
		for i := range int64(64) {
			if _, err := live.WriteAt(stamp, i*4096); err != nil {
				t.Errorf("write during the resize: %v", err)
				return
			}
		}
	}()
	if err := live.Resize(3 << 20); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if live.Size() != 3<<20 {
		t.Fatalf("size %d after the resize", live.Size())
	}
	got := snapReadAll(t, live, 3<<20)
	want := append(bytes.Repeat(stamp, 64), before[64*4096:]...)
	want = append(want, make([]byte, 2<<20)...)
	if !bytes.Equal(got, want) {
		t.Fatal("content after the resize differs (writes lost, or the new range is not zero)")
	}
	if _, err := live.WriteAt([]byte("past the old end"), 2<<20); err != nil {
		t.Fatal(err)
	}
	if err := live.Freeze(s.path("snapshots/a.qcow2")); err != nil {
		t.Fatal(err)
	}
	if live.Size() != 3<<20 {
		t.Errorf("size %d after a freeze", live.Size())
	}
	if err := live.Close(); err != nil {
		t.Fatal(err)
	}
	live = s.open(t)
	defer live.Close()
	buf := make([]byte, 16)
	if _, err := live.ReadAt(buf, 2<<20); err != nil || string(buf) != "past the old end" || live.Size() != 3<<20 {
		t.Errorf("after a reopen: size %d, %q, %v", live.Size(), buf, err)
	}
}
