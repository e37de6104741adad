package fuseloop

import (
	"strconv"
	"strings"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
)

// After the backend grew, Resize makes the device as large, and the new
// range is usable.
func TestResizeGrowsDevice(t *testing.T) {
	testtools.Need(t, "blockdev", "dd")
	b := newBackend(t, 16<<20)
	a := attach(t, b, 4096)
	if got := devSize(t, a.Device()); got != 16<<20 {
		t.Fatalf("device has %d bytes, want %d", got, 16<<20)
	}
	if err := b.Resize(48 << 20); err != nil {
		t.Fatal(err)
	}
	if err := a.Resize(); err != nil {
		t.Fatal(err)
	}
	if got := devSize(t, a.Device()); got != 48<<20 {
		t.Fatalf("after Resize the device has %d bytes, want %d", got, 48<<20)
	}
	// The last MiB, beyond the old end, takes writes.
	run(t, "dd", "if=/dev/urandom", "of="+a.Device(), "bs=1M", "seek=47", "count=1", "oflag=direct", "status=none")
}

func devSize(t *testing.T, dev string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(strings.TrimSpace(run(t, "blockdev", "--getsize64", dev)), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
