package qcow2_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
	"golang.org/x/sys/unix"
)

// The lock bytes QEMU 7.2 holds on a qcow2 file (read in /proc/locks
// while qemu-io and qemu-nbd had images open): 100+i for each permission
// it has, 200+i for each it does not share (i: consistent read 0, write 1,
// write unchanged 2, resize 3).
var (
	writerBytes = []int64{100, 101, 103, 201, 203}
	readerBytes = []int64{100, 201, 203}
	sharedBytes = []int64{100}
)

// heldBytes lists the lock bytes (100-103, 200-203) that some open file
// description holds on path, asked through one of its own (which holds
// none, so every lock shows).
func heldBytes(t testing.TB, path string) []int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var held []int64
	for _, base := range []int64{100, 200} {
		for i := range int64(4) {
			lk := unix.Flock_t{Type: unix.F_WRLCK, Start: base + i, Len: 1}
			if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_GETLK, &lk); err != nil {
				t.Fatalf("F_OFD_GETLK %s: %v", path, err)
			}
			if lk.Type != unix.F_UNLCK {
				held = append(held, base+i)
			}
		}
	}
	return held
}

func wantHeld(t testing.TB, what, path string, want []int64) {
	t.Helper()
	if got := heldBytes(t, path); !slices.Equal(got, want) {
		t.Errorf("%s: lock bytes held on %s: %v, want %v", what, filepath.Base(path), got, want)
	}
}

func wantLocked(t testing.TB, what string, err error) {
	t.Helper()
	if !errors.Is(err, qcow2.ErrLocked) {
		t.Fatalf("%s: got %v, want an error wrapping ErrLocked", what, err)
	}
}

func mustOpen(t testing.TB, path string, opts qcow2.Options) *qcow2.Image {
	t.Helper()
	img, err := qcow2.Open(path, opts)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	return img
}

func closeOrFail(t testing.TB, img interface{ Close() error }) {
	t.Helper()
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
}

// lockChain makes dir/base.qcow2 (1 MiB, first cluster 0x11) and
// dir/top.qcow2 on it, and returns their paths.
func lockChain(t testing.TB) (base, top string) {
	t.Helper()
	dir := t.TempDir()
	base, top = filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "top.qcow2")
	if err := qcow2.Create(base, qcow2.CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	b := mustOpen(t, base, qcow2.Options{})
	if _, err := b.WriteAt(bytes.Repeat([]byte{0x11}, 64<<10), 0); err != nil {
		t.Fatal(err)
	}
	closeOrFail(t, b)
	if err := qcow2.Create(top, qcow2.CreateOptions{BackingFile: "base.qcow2", BackingFormat: "qcow2"}); err != nil {
		t.Fatal(err)
	}
	return base, top
}

// lockHelperEnv names the image the helper process opens writable.
const lockHelperEnv = "QCOW2_LOCK_HELPER_IMAGE"

// TestLockHelperProcess is not a test: run by holdInOtherProcess (this test
// binary started again), it opens the image writable, says "open", and
// keeps it open until its stdin closes.
func TestLockHelperProcess(t *testing.T) {
	path := os.Getenv(lockHelperEnv)
	if path == "" {
		t.Skip("the other process of TestLockCrossProcess")
	}
	img, err := qcow2.Open(path, qcow2.Options{})
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(2)
	}
	fmt.Println("open")
	io.Copy(io.Discard, os.Stdin)
	if err := img.Close(); err != nil {
		fmt.Println("error:", err)
		os.Exit(2)
	}
	os.Exit(0)
}

// holdInOtherProcess opens path writable in another process and returns
// once it is open; the returned function closes it there and waits for
// that process to exit.
func holdInOtherProcess(t *testing.T, path string) (release func()) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestLockHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), lockHelperEnv+"="+path)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	first := make(chan string, 1)
	exited := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		line := ""
		if sc.Scan() {
			line = sc.Text()
		}
		first <- line
		io.Copy(io.Discard, stdout)
		exited <- cmd.Wait()
	}()
	if line := testtools.Within(t, "the other process to open the image", first); line != "open" {
		stdin.Close()
		t.Fatalf("other process: %q", line)
	}
	done := false
	release = func() {
		if done {
			return
		}
		done = true
		stdin.Close()
		if err := testtools.Within(t, "the other process to close the image and exit", exited); err != nil {
			t.Errorf("other process: %v", err)
		}
	}
	t.Cleanup(release)
	return release
}
