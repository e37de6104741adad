package nbdattach

import (
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Re-adoption keeps a device of the image's size, grows a smaller one
// (the image grew while no server told the kernel) and refuses a larger
// one (its user may hold data past the image's end).
func TestReadoptSize(t *testing.T) {
	dev := Device{Path: "/dev/nbd3", Size: 64 << 20}
	cases := []struct {
		image, want uint64
		refused     bool
	}{
		{image: 64 << 20, want: 0},
		{image: 96 << 20, want: 96 << 20},
		{image: 32 << 20, refused: true},
	}
	for _, c := range cases {
		got, err := readoptSize(dev, c.image)
		if got != c.want || (err != nil) != c.refused {
			t.Errorf("image %d on a device of %d: grow %d, err %v", c.image, dev.Size, got, err)
		}
		if err != nil && !strings.Contains(err.Error(), "/dev/nbd3") {
			t.Errorf("the refusal does not name the device: %v", err)
		}
	}
}

// taken tells a socket whose other end someone still holds (the kernel,
// played here by a duplicate of the descriptor) from one whose other end
// is gone, without waiting.
func TestTakenSocket(t *testing.T) {
	orphan, err := newKernelSocket()
	if err != nil {
		t.Fatal(err)
	}
	defer orphan.closeAll()
	kept, err := newKernelSocket()
	if err != nil {
		t.Fatal(err)
	}
	defer kept.closeAll()
	kernelRef, err := unix.Dup(kept.kernelFD)
	if err != nil {
		t.Fatal(err)
	}
	n, err := releaseAndCountTaken([]*kernelSocket{orphan, kept})
	if err != nil || n != 1 {
		t.Fatalf("taken %d of 2 (%v), want 1", n, err)
	}
	if ok, _ := orphan.taken(); ok {
		t.Error("a socket nobody holds the other end of counts as taken")
	}
	if ok, _ := kept.taken(); !ok {
		t.Error("a socket whose other end is held counts as not taken")
	}
	unix.Close(kernelRef)
	if ok, _ := kept.taken(); ok {
		t.Error("still taken after the last reference closed")
	}
}
