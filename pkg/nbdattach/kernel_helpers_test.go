package nbdattach

// Helpers for the tests that need the kernel's nbd driver (TestKernel*).
// The host that builds this has none; the VM test bed builds this test
// binary into its guest, whose 48-resize script runs these tests with
// CSI_QCOW2_KERNEL_NBD=1 (docs/vm-testbed.md). Elsewhere they skip.

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
)

func needKernelNBD(t *testing.T) {
	t.Helper()
	if os.Getenv("CSI_QCOW2_KERNEL_NBD") != "1" {
		t.Skip("needs the kernel's nbd driver: the VM test bed runs this (48-resize)")
	}
}

// kernelDevice is a raw file served by a Server and attached to a kernel
// nbd device by this process.
type kernelDevice struct {
	srv     *Server
	backend *FileBackend
	file    string
	att     *Attachment

	mu     sync.Mutex
	conns  []net.Conn // the server's ends, in the order the kernel got them
	serves atomic.Int64
}

// attachFile creates a raw file of size bytes and attaches it; the device
// is detached when the test ends.
func attachFile(t *testing.T, size int64, useIoctl bool) *kernelDevice {
	t.Helper()
	kd := &kernelDevice{file: filepath.Join(t.TempDir(), "disk.raw")}
	if err := os.WriteFile(kd.file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(kd.file, size); err != nil {
		t.Fatal(err)
	}
	var err error
	if kd.backend, err = OpenFileBackend(kd.file, false); err != nil {
		t.Fatal(err)
	}
	kd.srv = NewServer(Options{Logf: t.Logf})
	if err := kd.srv.AddExport(&Export{Backend: kd.backend}); err != nil {
		t.Fatal(err)
	}
	serve := func(c net.Conn) error {
		kd.mu.Lock()
		kd.conns = append(kd.conns, c)
		kd.serves.Add(1)
		kd.mu.Unlock()
		return kd.srv.ServeTransmission(c, "")
	}
	kd.att, err = Attach(AttachOptions{BackendID: "kernel-test/" + t.Name(), Size: uint64(size),
		Flags: ExportFlags(kd.backend), UseIoctl: useIoctl, Logf: t.Logf}, serve)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("attached %s (netlink %v)", kd.att.Path, kd.att.Netlink)
	t.Cleanup(func() {
		if err := kd.att.Detach(); err != nil {
			t.Errorf("detach: %v", err)
		}
		kd.srv.Close()
		kd.backend.Close()
	})
	return kd
}

// conn returns the server's end of the i-th connection the kernel got,
// once the goroutine that serves it has started.
func (kd *kernelDevice) conn(t *testing.T, i int) net.Conn {
	t.Helper()
	testtools.WaitFor(t, fmt.Sprintf("connection %d to be served", i), func() bool { return kd.serves.Load() > int64(i) })
	kd.mu.Lock()
	defer kd.mu.Unlock()
	return kd.conns[i]
}

// grow resizes the export, then the device: the order a server must keep.
func (kd *kernelDevice) grow(t *testing.T, size int64) {
	t.Helper()
	if err := kd.srv.ResizeExport("", size); err != nil {
		t.Fatal(err)
	}
	if err := kd.att.Resize(uint64(size)); err != nil {
		t.Fatal(err)
	}
}

// openDirect opens the device with O_DIRECT: what a test writes goes to
// the server at once and what it reads comes from it.
func openDirect(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// alignedBuf returns n bytes aligned for O_DIRECT.
func alignedBuf(n int) []byte {
	b := make([]byte, n+4096)
	off := int(-uintptr(unsafe.Pointer(&b[0])) & 4095)
	return b[off : off+n]
}

// blockSize64 is what `blockdev --getsize64` prints: BLKGETSIZE64.
func blockSize64(t *testing.T, f *os.File) uint64 {
	t.Helper()
	var size uint64
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&size))); errno != 0 {
		t.Fatalf("BLKGETSIZE64: %v", errno)
	}
	return size
}

// blockLoad writes and reads back 64 KiB blocks through its own O_DIRECT
// descriptor within the first span bytes of the device, over and over,
// until stopped. Each step is a write, a read and a compare; steps counts
// the ones that passed; the first failure ends it and is kept.
type blockLoad struct {
	steps atomic.Int64
	stop  chan struct{}
	done  chan error
}

func startBlockLoad(t *testing.T, path string, span int64) *blockLoad {
	t.Helper()
	f := openDirect(t, path)
	l := &blockLoad{stop: make(chan struct{}), done: make(chan error, 1)}
	go func() {
		w, r := alignedBuf(64<<10), alignedBuf(64<<10)
		for i := int64(0); ; i++ {
			select {
			case <-l.stop:
				l.done <- nil
				return
			default:
			}
			off := i * (64 << 10) % span
			for j := range w {
				w[j] = byte(i + int64(j)>>12)
			}
			if _, err := f.WriteAt(w, off); err != nil {
				l.done <- err
				return
			}
			if _, err := f.ReadAt(r, off); err != nil {
				l.done <- err
				return
			}
			if !bytes.Equal(w, r) {
				l.done <- errors.New("the load read back other data than it wrote")
				return
			}
			l.steps.Add(1)
		}
	}()
	return l
}

func (l *blockLoad) finish() error {
	close(l.stop)
	return <-l.done
}

// uevents listens to the kernel's uevents (NETLINK_KOBJECT_UEVENT).
type uevents struct{ fd int }

func listenUevents(t *testing.T) *uevents {
	t.Helper()
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_KOBJECT_UEVENT)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: 1}); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return &uevents{fd: fd}
}

// pending returns the uevents received so far, each as its NUL-separated
// fields, without waiting for more.
func (u *uevents) pending(t *testing.T) [][]string {
	t.Helper()
	var out [][]string
	buf := make([]byte, 64<<10)
	for {
		n, _, err := unix.Recvfrom(u.fd, buf, unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EAGAIN) {
			return out
		}
		if err != nil {
			t.Fatalf("uevent socket: %v", err)
		}
		out = append(out, strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00"))
	}
}

// kernelLog returns the kernel's log buffer as /dev/kmsg has it.
func kernelLog(t *testing.T) string {
	t.Helper()
	f, err := os.OpenFile("/dev/kmsg", os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var log strings.Builder
	buf := make([]byte, 8192)
	for {
		n, err := unix.Read(int(f.Fd()), buf)
		switch {
		case errors.Is(err, unix.EPIPE):
			continue // records overwritten meanwhile: go on with the next
		case err != nil:
			return log.String()
		}
		log.Write(buf[:n])
	}
}
