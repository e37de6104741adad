package fuseloop

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
)

// attach exports b under a fresh directory and registers a cleanup that
// detaches it and checks that nothing is left.
func attach(t *testing.T, b *countingBackend, blockSize int) *Attachment {
	t.Helper()
	testtools.NeedRoot(t)
	a, err := Attach(b, Options{Dir: filepath.Join(t.TempDir(), "mnt"), Name: "disk", BlockSize: blockSize})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := a.Detach(); err != nil {
			t.Errorf("Detach: %v", err)
		}
		assertGone(t, a)
	})
	return a
}

// assertGone checks that neither the FUSE mount nor the loop binding of a
// is left on the machine.
func assertGone(t *testing.T, a *Attachment) {
	t.Helper()
	if mounted(t, a.dir) {
		t.Errorf("%s is still mounted", a.dir)
	}
	if loopBoundTo(a.dev, a.path) {
		t.Errorf("%s is still bound to %s", a.dev, a.path)
	}
	// Any loop device: the binding must not have moved elsewhere either.
	devs, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, d := range devs {
		if b, _ := os.ReadFile(d); strings.HasPrefix(strings.TrimSpace(string(b)), a.dir) {
			t.Errorf("%s still names %s", d, strings.TrimSpace(string(b)))
		}
	}
}

// mounted reports whether dir is a mount point in /proc/self/mountinfo.
func mounted(t *testing.T, dir string) bool {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if fields := strings.Fields(s.Text()); len(fields) > 4 && fields[4] == dir {
			return true
		}
	}
	return false
}

// run runs a command and fails the test with its output if it fails.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}
