package qcow2nbd

import (
	"bytes"
	"errors"
	"path/filepath"
	"slices"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/pkg/nbdattach"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

func newImage(t *testing.T, compat string, readOnly bool) *Image {
	t.Helper()
	p := filepath.Join(t.TempDir(), "d.qcow2")
	if err := qcow2.Create(p, qcow2.CreateOptions{Size: 4 << 20, Compat: compat}); err != nil {
		t.Fatal(err)
	}
	img, err := qcow2.Open(p, qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { img.Close() })
	return New(img, readOnly)
}

func TestAdapterZeroesAndStatus(t *testing.T) {
	b := newImage(t, "1.1", false)
	if c := b.Caps(); !c.MultiConn || !c.FastZero || !c.BlockStatus || c.ReadOnly {
		t.Errorf("caps %+v", c)
	}
	data := bytes.Repeat([]byte{9}, 128<<10)
	if _, err := b.WriteAt(data, 64<<10); err != nil {
		t.Fatal(err)
	}
	// A fast zero of a partial cluster would have to write zero bytes.
	if err := b.WriteZeroes(64<<10+512, 4096, nbdattach.ZeroFast); !errors.Is(err, nbdattach.ErrNotFast) {
		t.Errorf("unaligned fast zero: %v", err)
	}
	if err := b.WriteZeroes(64<<10, 64<<10, nbdattach.ZeroFast); err != nil {
		t.Fatal(err)
	}
	exts, err := b.BlockStatus(0, 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	// Unallocated and zeroed clusters are holes that read as zeros (merged
	// here), then the cluster still holding data, then unallocated.
	want := []nbdattach.Extent{
		{Length: 128 << 10, Hole: true, Zero: true},
		{Length: 64 << 10},
		{Length: 4<<20 - 192<<10, Hole: true, Zero: true},
	}
	var merged []nbdattach.Extent
	for _, e := range exts {
		if n := len(merged); n > 0 && merged[n-1].Hole == e.Hole && merged[n-1].Zero == e.Zero {
			merged[n-1].Length += e.Length
			continue
		}
		merged = append(merged, e)
	}
	if !slices.Equal(merged, want) {
		t.Errorf("block status %+v, want %+v", merged, want)
	}
	got := make([]byte, 128<<10)
	if _, err := b.ReadAt(got, 64<<10); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:64<<10], make([]byte, 64<<10)) || !bytes.Equal(got[64<<10:], data[:64<<10]) {
		t.Error("zeroing changed the wrong cluster")
	}
	if err := b.Trim(128<<10, 64<<10); err != nil {
		t.Fatal(err)
	}
	if err := b.Flush(); err != nil {
		t.Fatal(err)
	}
}

func TestAdapterReadOnlyAndV2(t *testing.T) {
	ro := newImage(t, "1.1", true)
	if !ro.Caps().ReadOnly {
		t.Error("read-only adapter advertises writes")
	}
	if _, err := ro.WriteAt([]byte{1}, 0); !errors.Is(err, nbdattach.ErrReadOnly) {
		t.Errorf("write: %v", err)
	}
	for _, err := range []error{ro.Trim(0, 512), ro.WriteZeroes(0, 512, 0)} {
		if !errors.Is(err, nbdattach.ErrReadOnly) {
			t.Errorf("read-only trim/zero: %v", err)
		}
	}
	v2 := newImage(t, "0.10", false)
	if v2.Caps().FastZero {
		t.Error("v2 image claims fast zeroing")
	}
	if err := v2.WriteZeroes(0, 64<<10, nbdattach.ZeroFast); !errors.Is(err, nbdattach.ErrNotFast) {
		t.Errorf("v2 fast zero: %v", err)
	}
}

// A live volume is served through the same adapter, and a freeze while it
// is served leaves the written data readable on the new top.
func TestAdapterLive(t *testing.T) {
	dir := t.TempDir()
	live, b := newLiveAdapter(t, dir)
	if _, err := b.WriteAt([]byte("before"), 4096); err != nil {
		t.Fatal(err)
	}
	if err := live.Freeze(filepath.Join(dir, "snap.qcow2")); err != nil {
		t.Fatal(err)
	}
	if _, err := b.WriteAt([]byte("after!"), 8192); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 6)
	for off, want := range map[int64]string{4096: "before", 8192: "after!"} {
		if _, err := b.ReadAt(got, off); err != nil || string(got) != want {
			t.Errorf("read at %d: %q, %v", off, got, err)
		}
	}
}

// newLiveAdapter creates a 1 MiB qcow2 volume in dir, opens it live (closed
// when the test ends) and serves it through the adapter.
func newLiveAdapter(t *testing.T, dir string) (*qcow2.Live, *Image) {
	t.Helper()
	p := filepath.Join(dir, "vol.qcow2")
	if err := qcow2.Create(p, qcow2.CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	live, err := qcow2.OpenLive(p, qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { live.Close() })
	return live, New(live, false)
}
