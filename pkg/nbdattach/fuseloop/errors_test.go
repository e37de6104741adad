package fuseloop

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
	"github.com/csi-qcow2/csi-qcow2/pkg/nbdattach"
)

// A write the backend cannot store reaches the writer as an error: ENOSPC
// as ENOSPC, anything else as EIO. Never as success.
func TestBackendWriteErrorsReachWriter(t *testing.T) {
	testtools.Need(t, "dd")
	for _, c := range []struct {
		name string
		err  error
		want string
	}{
		{"ENOSPC", syscall.ENOSPC, "No space left on device"},
		{"ErrNoSpace", nbdattach.ErrNoSpace, "No space left on device"},
		{"other", errors.New("backend broke"), "Input/output error"},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := newBackend(t, 8<<20)
			a := attach(t, b, 4096)
			b.failWrites(c.err)
			out, err := exec.Command("dd", "if=/dev/zero", "of="+a.Device(), "bs=4k", "count=1", "oflag=direct", "status=none").CombinedOutput()
			if err == nil {
				t.Fatalf("dd succeeded though the backend refused the write")
			}
			if !strings.Contains(string(out), c.want) {
				t.Fatalf("dd said %q, want %q", out, c.want)
			}
		})
	}
}

// A Flush the backend fails reaches fsync of the device as EIO: a
// barrier that did not make data durable must not look as if it had.
func TestBackendFlushErrorReachesFsync(t *testing.T) {
	b := newBackend(t, 8<<20)
	a := attach(t, b, 4096)
	dev, err := os.OpenFile(a.Device(), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	if err := dev.Sync(); err != nil {
		t.Fatalf("fsync with a healthy backend: %v", err)
	}
	broke := error(errors.New("backend cannot sync"))
	b.flushErr.Store(&broke)
	if err := dev.Sync(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("fsync with a failing backend Flush = %v, want EIO", err)
	}
	b.flushErr.Store(nil)
}
