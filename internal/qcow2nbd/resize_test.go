package qcow2nbd

import (
	"bytes"
	"errors"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
	"github.com/csi-qcow2/csi-qcow2/pkg/nbdattach"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// The adapter grows an Image and a Live handle alike; the new range reads
// as zeros; shrinking and read-only adapters are refused.
func TestAdapterResize(t *testing.T) {
	live := func(t *testing.T) *Image {
		p := filepath.Join(t.TempDir(), "vol.qcow2")
		if err := qcow2.Create(p, qcow2.CreateOptions{Size: 4 << 20}); err != nil {
			t.Fatal(err)
		}
		l, err := qcow2.OpenLive(p, qcow2.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		return New(l, false)
	}
	for name, open := range map[string]func(*testing.T) *Image{
		"image": func(t *testing.T) *Image { return newImage(t, "1.1", false) },
		"live":  live,
	} {
		t.Run(name, func(t *testing.T) {
			b := open(t)
			if _, err := b.WriteAt(bytes.Repeat([]byte{1}, 4096), 4<<20-4096); err != nil {
				t.Fatal(err)
			}
			if err := b.Resize(12 << 20); err != nil {
				t.Fatal(err)
			}
			if b.Size() != 12<<20 {
				t.Fatalf("size %d", b.Size())
			}
			got := make([]byte, 8<<20)
			if _, err := b.ReadAt(got, 4<<20); err != nil || !bytes.Equal(got, make([]byte, 8<<20)) {
				t.Errorf("the new range does not read as zeros (%v)", err)
			}
			if _, err := b.WriteAt([]byte("new end"), 12<<20-7); err != nil {
				t.Fatal(err)
			}
			if err := b.Resize(8 << 20); !errors.Is(err, nbdattach.ErrShrink) {
				t.Errorf("shrink: %v, want ErrShrink", err)
			}
		})
	}
	if err := newImage(t, "1.1", true).Resize(8 << 20); !errors.Is(err, nbdattach.ErrReadOnly) {
		t.Errorf("read-only resize: %v", err)
	}
}

// Served images grown by ResizeExport: qemu's tools, connecting after the
// resize, are told the new size in the handshake and write and read past
// the old end; afterwards the file checks clean and qemu-img reads the new
// size and data from it.
func TestInteropResize(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io", "nbdinfo")
	for _, kind := range interopImages {
		t.Run(kind.name, func(t *testing.T) {
			path := kind.create(t, t.TempDir())
			b, closeFn := kind.open(t, path)
			srv := serveBackend(t, b, closeFn)
			const grown = interopSize + 8<<20
			if err := srv.server.ResizeExport("", grown); err != nil {
				t.Fatal(err)
			}
			if got := strings.TrimSpace(run(t, "nbdinfo", "--size", srv.uri)); got != strconv.Itoa(grown) {
				t.Fatalf("nbdinfo --size %s, want %d", got, grown)
			}
			past := strconv.Itoa(interopSize + 4<<20)
			run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x44 "+past+" 64k", "-c", "read -P 0x44 "+past+" 64k",
				"-c", "read -P 0 "+strconv.Itoa(interopSize)+" 4M", "-c", "read -P 0x11 0 512k", srv.uri)
			srv.stop()
			if kind.name != "raw" {
				run(t, "qemu-img", "check", path)
			}
			if info := run(t, "qemu-img", "info", path); !strings.Contains(info, "("+strconv.Itoa(grown)+" bytes)") {
				t.Errorf("qemu-img info does not show %d bytes:\n%s", grown, info)
			}
			run(t, "qemu-io", "-c", "read -P 0x44 "+past+" 64k", path)
		})
	}
}
