package qcow2nbd

import (
	"bytes"
	"errors"
	"path/filepath"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/pkg/nbdattach"
)

// The adapter's ReadAtNoWait (nbdattach.NoWaitReader) reads what ReadAt
// reads, through an Image and through a Live whose top was frozen (the
// cluster written before the freeze is in the backing layer), or declines
// with nbdattach.ErrWouldBlock; an engine without it says
// nbdattach.ErrNoWaitUnsupported.
func TestAdapterReadAtNoWait(t *testing.T) {
	dir := t.TempDir()
	live, b := newLiveAdapter(t, dir)
	before, after := bytes.Repeat([]byte("b"), 4096), bytes.Repeat([]byte("a"), 4096)
	if _, err := b.WriteAt(before, 4096); err != nil {
		t.Fatal(err)
	}
	if err := live.Freeze(filepath.Join(dir, "snap.qcow2")); err != nil {
		t.Fatal(err)
	}
	if _, err := b.WriteAt(after, 8<<16); err != nil {
		t.Fatal(err)
	}
	if _, err := b.ReadAt(make([]byte, 1<<20), 0); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	served := 0
	for off, want := range map[int64][]byte{4096: before, 8 << 16: after, 12 << 16: make([]byte, 4096)} {
		n, err := b.ReadAtNoWait(got, off)
		switch {
		case errors.Is(err, nbdattach.ErrNoWaitUnsupported):
			t.Skip("no RWF_NOWAIT here")
		case errors.Is(err, nbdattach.ErrWouldBlock):
			continue
		case err != nil || n != len(got) || !bytes.Equal(got, want):
			t.Fatalf("at %d: %d, %v, right data %v", off, n, err, bytes.Equal(got, want))
		}
		served++
	}
	if served == 0 {
		t.Error("nothing served without waiting from a warm image")
	}
	if _, err := New(plainEngine{live}, false).ReadAtNoWait(got, 0); !errors.Is(err, nbdattach.ErrNoWaitUnsupported) {
		t.Errorf("engine without ReadAtNoWait: %v", err)
	}
}

// plainEngine hides the engine's ReadAtNoWait.
type plainEngine struct{ Engine }
