package nbdattach

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
)

// fakeSysBlock builds a /sys/block look-alike.
func fakeSysBlock(t *testing.T, devs map[string]map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for name, attrs := range devs {
		dir := filepath.Join(root, name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for k, v := range attrs {
			if err := os.WriteFile(filepath.Join(dir, k), []byte(v), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return root
}

func TestListDevicesAndFindByBackend(t *testing.T) {
	self := strconv.Itoa(os.Getpid())
	root := fakeSysBlock(t, map[string]map[string]string{
		"nbd10":  {"size": "0\n"},
		"nbd2":   {"size": "2048\n", "pid": self + "\n", "backend": "vol-a\n"},
		"nbd0":   {"size": "8\n", "pid": "999999999\n", "backend": "vol-b\n"},
		"nbd0p1": {"size": "4\n"},
		"sda":    {"size": "100\n"},
	})
	devs, err := ListDevices(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != 3 || devs[0].Index != 0 || devs[1].Index != 2 || devs[2].Index != 10 {
		t.Fatalf("devices %+v: want nbd0, nbd2, nbd10 in order (no partitions, no sda)", devs)
	}
	a := devs[1]
	if a.Path != "/dev/nbd2" || a.Size != 2048*512 || a.Backend != "vol-a" || a.PID != os.Getpid() || !a.Configured() {
		t.Errorf("nbd2 = %+v", a)
	}
	if devs[2].Configured() || devs[2].Backend != "" {
		t.Errorf("nbd10 = %+v, want unconfigured", devs[2])
	}

	d, ok, err := FindByBackend(root, "vol-b")
	if err != nil || !ok || d.Index != 0 {
		t.Errorf("FindByBackend(vol-b) = %+v %v %v", d, ok, err)
	}
	if _, ok, err := FindByBackend(root, "vol-x"); ok || err != nil {
		t.Errorf("FindByBackend(vol-x) = %v %v", ok, err)
	}
	if _, err := ResolveDevice(root, "/dev/nbd2"); err != nil {
		t.Error(err)
	}
	if d, err := ResolveDevice(root, "vol-a"); err != nil || d.Index != 2 {
		t.Errorf("ResolveDevice(vol-a) = %+v %v", d, err)
	}
	if _, err := ResolveDevice(root, "/dev/nbd7"); err == nil {
		t.Error("ResolveDevice of a missing device succeeded")
	}
}

func TestFindByBackendRefusesDuplicates(t *testing.T) {
	root := fakeSysBlock(t, map[string]map[string]string{
		"nbd0": {"size": "8", "pid": "1", "backend": "vol"},
		"nbd1": {"size": "8", "pid": "1", "backend": "vol"},
	})
	if _, _, err := FindByBackend(root, "vol"); err == nil {
		t.Fatal("two devices with one backend identifier were not reported")
	}
}

// A device with a backend identifier is served while some process holds
// the identifier's lock, whatever process its recorded pid names: a live
// pid (this test process, standing for a pid reused after the server died)
// does not make it served, and a dead one does not make it unserved (a
// re-adopter keeps the first server's pid).
func TestServerAliveIsTheBackendLock(t *testing.T) {
	reused := Device{Backend: "vol-alive-test", PID: os.Getpid()}
	if reused.ServerAlive() {
		t.Error("a device whose recorded pid is a live process counts as served while nobody holds its lock")
	}
	l, err := lockBackend(reused.Backend)
	if err != nil {
		t.Fatal(err)
	}
	readopted := Device{Backend: reused.Backend, PID: 999999999}
	if !readopted.ServerAlive() || !reused.ServerAlive() {
		t.Error("a device whose lock is held counts as unserved")
	}
	l.release()
	if readopted.ServerAlive() {
		t.Error("a released lock still counts as a server")
	}
	if (Device{Backend: reused.Backend}).ServerAlive() {
		t.Error("an unconfigured device counts as served")
	}
}

// A device attached by ioctl has no identifier and dies with its server:
// its recorded task is asked.
func TestZombieServerIsDead(t *testing.T) {
	// A server killed with -9 stays a zombie until its parent reaps it; its
	// sockets are closed already, so it must count as dead.
	cmd := exec.Command("sleep", "3600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	dev := Device{PID: cmd.Process.Pid}
	if !dev.ServerAlive() {
		t.Error("a running child counts as dead")
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	testtools.WaitFor(t, "the killed child to become a zombie", func() bool {
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(dev.PID) + "/stat")
		return strings.Contains(string(b), ") Z ")
	})
	if dev.ServerAlive() {
		t.Error("a zombie counts as alive")
	}
	cmd.Wait()
	if dev.ServerAlive() {
		t.Error("a reaped process counts as alive")
	}
}

func TestNbdIndex(t *testing.T) {
	for name, want := range map[string]int{"nbd0": 0, "nbd15": 15} {
		if got, ok := nbdIndex(name); !ok || got != want {
			t.Errorf("nbdIndex(%q) = %d %v", name, got, ok)
		}
	}
	for _, bad := range []string{"nbd", "nbd0p1", "nbd01", "nbd-1", "loop0", "nbdx"} {
		if _, ok := nbdIndex(bad); ok {
			t.Errorf("nbdIndex(%q) accepted", bad)
		}
	}
}
