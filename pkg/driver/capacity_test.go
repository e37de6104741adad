package driver

import (
	"context"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
	"github.com/csi-qcow2/csi-qcow2/pkg/driver/store"
)

// GetCapacity on a filesystem of its own: a new volume takes its size
// from what is promised, writing into it moves bytes from free to
// allocated without changing the promise, deleting it gives it back.
func TestCapacityFollowsVolumes(t *testing.T) {
	fs := testtools.MountThinFS(t, 256<<20)
	d, _ := startDriver(t, Config{StateDir: fs.Dir + "/state"})
	c := controllerServer{d: d}
	ctx := context.Background()
	avail := func() int64 {
		t.Helper()
		r, err := c.GetCapacity(ctx, &csi.GetCapacityRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return r.GetAvailableCapacity()
	}
	near := func(what string, got, want int64) {
		t.Helper()
		if got < want-(1<<20) || got > want+(1<<20) {
			t.Errorf("%s: available %d, want %d within a MiB", what, got, want)
		}
	}
	a0 := avail()
	v, err := c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-cap", VolumeCapabilities: []*csi.VolumeCapability{blockCap()},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 32 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	near("after a 32 MiB volume", avail(), a0-32<<20)
	st, _ := d.store()
	l, release, err := st.Hold(v.GetVolume().GetVolumeId())
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 16<<20)
	for i := range p {
		p[i] = byte(i)
	}
	if _, err := l.WriteAt(p, 0); err != nil {
		t.Fatal(err)
	}
	if err := l.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := release(); err != nil {
		t.Fatal(err)
	}
	near("after writing 16 MiB into it", avail(), a0-32<<20)
	if _, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.GetVolume().GetVolumeId()}); err != nil {
		t.Fatal(err)
	}
	near("after deleting it", avail(), a0)
}

func TestAvailableOvercommit(t *testing.T) {
	u := store.Usage{FreeBytes: 100, AllocatedBytes: 50, VirtualBytes: 120}
	for _, tc := range []struct {
		r    float64
		want int64
	}{{1, 30}, {2, 180}, {0.5, 0}, {10, 1000}} {
		if got := u.Available(tc.r); got != tc.want {
			t.Errorf("overcommit %v: %d, want %d", tc.r, got, tc.want)
		}
	}
}
