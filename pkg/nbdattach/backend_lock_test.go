package nbdattach

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
)

// lockHolderEnv makes the test binary, run as a child, take the backend
// lock it names, say so on stdout and wait to be killed.
const lockHolderEnv = "NBDATTACH_TEST_HOLD_BACKEND_LOCK"

func TestMain(m *testing.M) {
	if id := os.Getenv(lockHolderEnv); id != "" {
		if _, err := lockBackend(id); err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		fmt.Println("locked")
		time.Sleep(time.Hour)
	}
	os.Exit(m.Run())
}

// Only one holder at a time, this process included; a released lock can be
// taken again; long identifiers are fine (the address is a hash).
func TestBackendLock(t *testing.T) {
	id := "vol-lock-test/" + strings.Repeat("x", maxBackendIDLen)
	l, err := lockBackend(id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lockBackend(id); !errors.Is(err, ErrServed) {
		t.Fatalf("second lock in one process: %v, want ErrServed", err)
	}
	other, err := lockBackend(id + "-other")
	if err != nil {
		t.Fatalf("another identifier's lock: %v", err)
	}
	other.release()
	if !backendServed(id) || backendServed(id+"-other") {
		t.Error("backendServed does not follow the locks")
	}
	l.release()
	if backendServed(id) {
		t.Error("a released lock counts as held")
	}
	l, err = lockBackend(id)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	l.release()
}

// The lock is gone when its holder dies by SIGKILL, already while the
// holder is an unreaped zombie: a restarted server can take it at once,
// whatever became of the dead server's pid. (The group leader of a
// multithreaded process shows as a zombie as soon as it has exited itself;
// its descriptors close with its last thread, so the test waits for that:
// a zombie with one thread left.)
func TestBackendLockDiesWithItsProcess(t *testing.T) {
	id := "vol-lock-death-" + strconv.Itoa(os.Getpid())
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), lockHolderEnv+"="+id)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(out).ReadString('\n')
		line <- s
	}()
	if s := testtools.Within(t, "the child to take the lock", line); s != "locked\n" {
		t.Fatalf("child: %q", s)
	}
	if _, err := lockBackend(id); !errors.Is(err, ErrServed) {
		t.Fatalf("lock held by a live child: %v, want ErrServed", err)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	proc := "/proc/" + strconv.Itoa(cmd.Process.Pid)
	testtools.WaitFor(t, "the killed child to become a zombie with all its threads gone", func() bool {
		stat, _ := os.ReadFile(proc + "/stat")
		status, _ := os.ReadFile(proc + "/status")
		return strings.Contains(string(stat), ") Z ") && strings.Contains(string(status), "\nThreads:\t1\n")
	})
	l, err := lockBackend(id)
	if err != nil {
		t.Fatalf("lock of a killed, unreaped holder: %v", err)
	}
	l.release()
	cmd.Wait()
}

// Attach refuses an identifier whose lock another server holds before it
// looks at any device.
func TestAttachRefusesHeldBackend(t *testing.T) {
	id := "vol-attach-held-" + strconv.Itoa(os.Getpid())
	l, err := lockBackend(id)
	if err != nil {
		t.Fatal(err)
	}
	defer l.release()
	opts := AttachOptions{BackendID: id, Size: 1 << 20, Flags: tflagHasFlags, SysBlock: t.TempDir()}
	if _, err := Attach(opts, nil); !errors.Is(err, ErrServed) {
		t.Fatalf("Attach with the lock held elsewhere: %v, want ErrServed", err)
	}
}
