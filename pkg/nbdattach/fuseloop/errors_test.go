package fuseloop

import (
	"errors"
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
