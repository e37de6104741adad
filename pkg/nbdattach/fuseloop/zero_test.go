package fuseloop

import (
	"bytes"
	"errors"
	"os"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// BLKZEROOUT (write-zeroes that keep the space) arrives as ZERO_RANGE,
// BLKDISCARD and write-zeroes that may unmap as PUNCH_HOLE; all leave
// zeros in the backend. Other
// fallocate modes on the file are refused.
func TestZeroingReachesBackend(t *testing.T) {
	const size = 8 << 20
	b := newBackend(t, size)
	a := attach(t, b, 4096)
	dev, err := os.OpenFile(a.Device(), os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	full := alignedBuf(size)
	for i := range full {
		full[i] = 0xa5
	}
	if _, err := dev.WriteAt(full, 0); err != nil {
		t.Fatal(err)
	}

	for _, c := range []struct {
		name    string
		ioctl   uint
		off     uint64
		counter func() int64
	}{
		{"BLKZEROOUT", unix.BLKZEROOUT, 1 << 20, b.noHoleZeroes.Load},
		{"BLKDISCARD", unix.BLKDISCARD, 4 << 20, b.holeZeroes.Load},
	} {
		before := c.counter()
		r := [2]uint64{c.off, 1 << 20}
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, dev.Fd(), uintptr(c.ioctl), uintptr(unsafe.Pointer(&r))); e != 0 {
			t.Fatalf("%s: %v", c.name, e)
		}
		if c.counter() == before {
			t.Errorf("%s did not reach the backend's WriteZeroes the expected way", c.name)
		}
		got := make([]byte, 1<<20)
		if _, err := b.ReadAt(got, int64(c.off)); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, make([]byte, 1<<20)) {
			t.Errorf("%s left data in the backend", c.name)
		}
	}
	// fallocate(PUNCH_HOLE) on the device is REQ_OP_WRITE_ZEROES without
	// NOUNMAP (not a discard), which the loop driver also sends as
	// PUNCH_HOLE: the reason PUNCH_HOLE must zero, and cannot be Trim.
	before := b.holeZeroes.Load()
	if err := unix.Fallocate(int(dev.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 6<<20, 1<<20); err != nil {
		t.Fatalf("fallocate PUNCH_HOLE on the device: %v", err)
	}
	if b.holeZeroes.Load() == before {
		t.Errorf("write-zeroes did not arrive as a deallocating WriteZeroes")
	}
	got := make([]byte, 1<<20)
	if _, err := b.ReadAt(got, 6<<20); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, make([]byte, 1<<20)) {
		t.Errorf("write-zeroes left data in the backend")
	}
	if b.trims.Load() != 0 {
		t.Errorf("Trim was called %d times; nothing the loop device sends may become Trim", b.trims.Load())
	}

	f, err := os.OpenFile(a.File(), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fallocate(int(f.Fd()), 0, 0, 4096); !errors.Is(err, unix.EOPNOTSUPP) {
		t.Errorf("fallocate mode 0 = %v, want EOPNOTSUPP", err)
	}
}
