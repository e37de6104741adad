package driver

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
)

// A thin volume outgrows the store's filesystem: a write that cannot be
// stored fails with ENOSPC (not EIO, not a hang), what was written and
// synced before still reads back, the volume's health and the
// csi_qcow2_volume_abnormal metric say NoSpace, and once space is freed
// the same attachment takes writes again and the condition clears,
// without a restart.
func TestFullStoreFilesystem(t *testing.T) {
	ctx := context.Background()
	c := blockCap()
	fs, f, id := thinStoreVolume(t, "pvc-thin", c)
	target := f.attachAt(t, id, "thin", c)

	dev, err := os.OpenFile(target, os.O_RDWR|unix.O_DIRECT, 0)
	must(t, err)
	defer dev.Close()
	acked := alignedFill(t, 0x5a, 4<<20)
	if _, err := dev.WriteAt(acked, 0); err != nil {
		t.Fatal(err)
	}
	must(t, dev.Sync())

	fs.FillFilesystem()
	more := alignedFill(t, 0xc3, 1<<20)
	var werr error
	for off := int64(8 << 20); off < 200<<20 && werr == nil; off += 1 << 20 {
		_, werr = dev.WriteAt(more, off)
	}
	if !errors.Is(werr, syscall.ENOSPC) {
		t.Fatalf("a write the full store cannot take: %v, want ENOSPC", werr)
	}
	requireHealth(t, f, id, ReasonNoSpace)
	if !strings.Contains(scrapeMetrics(t, f.d), `reason="NoSpace"`) {
		t.Error("csi_qcow2_volume_abnormal has no NoSpace sample")
	}
	got := alignedFill(t, 0, len(acked))
	if _, err := dev.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, acked) {
		t.Fatal("data written and synced before the store filled does not read back")
	}

	fs.Free()
	if _, err := dev.WriteAt(more, 100<<20); err != nil {
		t.Fatalf("a write once space is freed: %v", err)
	}
	must(t, dev.Sync())
	requireHealth(t, f, id, "")
	if _, err := dev.ReadAt(got[:len(more)], 100<<20); err != nil || !bytes.Equal(got[:len(more)], more) {
		t.Fatalf("the write after space was freed does not read back (%v)", err)
	}
	must(t, dev.Close())
	f.detachAt(id, "thin")
	_, err = f.c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
	must(t, err)
}

// requireHealth fails unless volume id's health names reason ("" for none).
func requireHealth(t *testing.T, f *nodeFixture, id, reason string) {
	t.Helper()
	h, err := f.n.NodeGetVolumeHealth(context.Background(), &csi.NodeGetVolumeHealthRequest{VolumeId: id})
	must(t, err)
	var got string
	if st := h.VolumeHealth.GetHealthStatuses(); len(st) > 0 {
		got = st[0].Reason
		t.Logf("health: %s: %s", st[0].Reason, st[0].Message)
	}
	if got != reason {
		t.Fatalf("volume health reason %q, want %q", got, reason)
	}
}

func scrapeMetrics(t *testing.T, d *Driver) string {
	t.Helper()
	rec := httptest.NewRecorder()
	d.MetricsHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	return rec.Body.String()
}

// alignedFill is n bytes of b in page-aligned memory, for O_DIRECT.
func alignedFill(t *testing.T, b byte, n int) []byte {
	t.Helper()
	p, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(p) })
	for i := range p {
		p[i] = b
	}
	return p
}

// thinStoreVolume starts a driver whose store is a 96 MiB filesystem of
// its own (which a test can fill) and makes a 256 MiB volume there.
func thinStoreVolume(t *testing.T, name string, c *csi.VolumeCapability) (*testtools.ThinFS, *nodeFixture, string) {
	t.Helper()
	fs := testtools.MountThinFS(t, 96<<20)
	f := newNodeFixtureAt(t, Config{StateDir: filepath.Join(fs.Dir, "state")})
	v, err := f.c.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: name,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 256 << 20}, VolumeCapabilities: []*csi.VolumeCapability{c}})
	must(t, err)
	return fs, f, v.Volume.VolumeId
}
