package driver

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
)

// TestDriverChild is the driver as its own process, for the restart
// test: it serves until SIGTERM (SIGKILL is the point of the test).
func TestDriverChild(t *testing.T) {
	state := os.Getenv("CSI_QCOW2_CHILD_STATE")
	if state == "" {
		t.Skip("run by TestNodeRestartUnderLoad in a child process")
	}
	d, err := New(Config{Endpoint: os.Getenv("CSI_QCOW2_CHILD_SOCKET"), NodeID: "node-1", StateDir: state,
		Version: "test", AttachPath: os.Getenv("CSI_QCOW2_ATTACH_PATH")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if err := d.Run(ctx); err != nil {
		t.Fatal(err)
	}
}

// restartFixture runs the driver as a child process that the test can
// kill -9 and start again on the same state directory and socket.
type restartFixture struct {
	t      *testing.T
	state  string
	sock   string
	child  *exec.Cmd
	ident  csi.IdentityClient
	ctl    csi.ControllerClient
	node   csi.NodeClient
	exited chan struct{}
}

func (f *restartFixture) start() {
	t := f.t
	cmd := exec.Command(os.Args[0], "-test.run=^TestDriverChild$", "-test.v")
	cmd.Env = append(os.Environ(), "CSI_QCOW2_CHILD_STATE="+f.state, "CSI_QCOW2_CHILD_SOCKET="+f.sock)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	must(t, cmd.Start())
	f.child, f.exited = cmd, make(chan struct{})
	go func(exited chan struct{}) { cmd.Wait(); close(exited) }(f.exited)
	testtools.WaitFor(t, "the driver to be ready", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		r, err := f.ident.Probe(ctx, &csi.ProbeRequest{})
		return err == nil && r.GetReady().GetValue()
	})
}

// kill kills the driver with SIGKILL and waits until it is gone.
func (f *restartFixture) kill() {
	must(f.t, f.child.Process.Kill())
	<-f.exited
}

func (f *restartFixture) stop() {
	f.child.Process.Signal(syscall.SIGTERM)
	<-f.exited
}

// writer writes 64 KiB blocks round the first span bytes of dev with
// O_DIRECT, each followed by fdatasync, and remembers what every
// acknowledged block holds.
type writer struct {
	mu     sync.Mutex
	acked  map[int64]byte
	writes int
	errs   []error
	stop   chan struct{}
	done   chan struct{}
}

func startWriter(t *testing.T, dev string, span int64) *writer {
	w := &writer{acked: map[int64]byte{}, stop: make(chan struct{}), done: make(chan struct{})}
	f, err := os.OpenFile(dev, os.O_RDWR|unix.O_DIRECT, 0)
	must(t, err)
	buf := alignedFill(t, 0, 64<<10)
	go func() {
		defer close(w.done)
		defer f.Close()
		for i := 0; ; i++ {
			select {
			case <-w.stop:
				return
			default:
			}
			off := int64(i) * int64(len(buf)) % span
			b := byte(i%251 + 1)
			for k := range buf {
				buf[k] = b
			}
			_, err := f.WriteAt(buf, off)
			if err == nil {
				err = unix.Fdatasync(int(f.Fd()))
			}
			w.mu.Lock()
			if err != nil {
				w.errs = append(w.errs, err)
				delete(w.acked, off) // old or new, unknown
				w.mu.Unlock()
				return
			}
			w.acked[off] = b
			w.writes++
			w.mu.Unlock()
		}
	}()
	return w
}

func (w *writer) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.writes
}

func (w *writer) failed() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.errs) > 0
}

// verify reads every acknowledged block back from dev.
func (w *writer) verify(t *testing.T, dev string) {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_RDONLY|unix.O_DIRECT, 0)
	must(t, err)
	defer f.Close()
	buf := alignedFill(t, 0, 64<<10)
	w.mu.Lock()
	defer w.mu.Unlock()
	for off, b := range w.acked {
		if _, err := f.ReadAt(buf, off); err != nil {
			t.Fatalf("reading back %d: %v", off, err)
		}
		if !bytes.Equal(buf, bytes.Repeat([]byte{b}, len(buf))) {
			t.Fatalf("the block at %d acknowledged with %#x reads %#x", off, b, buf[0])
		}
	}
	t.Logf("%d acknowledged blocks read back", len(w.acked))
}

// kill -9 of the driver while a published block volume is under a write
// load (O_DIRECT writes, each followed by fdatasync), then a restart on
// the same state directory. On kernel NBD: no I/O error reaches the
// load, which goes on through the same device, and every acknowledged
// write reads back. On the FUSE path the restart costs what
// docs/fuseloop.md says: the load's next write fails (EIO, not a hang),
// nothing acknowledged is lost (it reads back after a new stage), and
// unpublish, unstage and delete succeed. Both end with the volume
// deleted and nothing left mounted or attached.
func TestNodeRestartUnderLoad(t *testing.T) {
	testtools.NeedRoot(t)
	dir := t.TempDir()
	f := &restartFixture{t: t, state: filepath.Join(dir, "state"), sock: filepath.Join(dir, "csi.sock")}
	conn, err := grpc.NewClient("unix://"+f.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	must(t, err)
	defer conn.Close()
	f.ident, f.ctl, f.node = csi.NewIdentityClient(conn), csi.NewControllerClient(conn), csi.NewNodeClient(conn)
	f.start()
	defer func() {
		select {
		case <-f.exited:
		default:
			f.stop()
		}
	}()
	ctx := context.Background()
	// The child chooses the same way on the same node.
	p, _, err := chooseAttachPath(os.Getenv("CSI_QCOW2_ATTACH_PATH"), f.state)
	must(t, err)
	path := p.name()

	c := blockCap()
	v, err := f.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-restart",
		CapacityRange: &csi.CapacityRange{RequiredBytes: 64 << 20}, VolumeCapabilities: []*csi.VolumeCapability{c}})
	must(t, err)
	id := v.Volume.VolumeId
	stage := func(name string) string {
		staging, target := filepath.Join(dir, name, "staging"), filepath.Join(dir, name, "target")
		must(t, os.MkdirAll(staging, 0o750))
		_, err := f.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: c})
		must(t, err)
		_, err = f.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: c})
		must(t, err)
		return target
	}
	unstage := func(name string) {
		staging, target := filepath.Join(dir, name, "staging"), filepath.Join(dir, name, "target")
		_, err := f.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
		must(t, err)
		_, err = f.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
		must(t, err)
	}
	target := stage("first")

	w := startWriter(t, target, 32<<20)
	testtools.WaitFor(t, "50 writes before the kill", func() bool { return w.count() >= 50 || w.failed() })
	f.kill()
	before := w.count()
	f.start()
	if path == attachNBD {
		testtools.WaitFor(t, "50 writes after the restart", func() bool { return w.count() >= before+50 || w.failed() })
	} else {
		testtools.WaitFor(t, "the load to see the dead FUSE connection", w.failed)
	}
	close(w.stop)
	<-w.done
	t.Logf("%s: %d writes acknowledged, %d before the kill; errors: %v", path, w.count(), before, w.errs)
	if path == attachNBD {
		if len(w.errs) > 0 {
			t.Fatalf("the load met I/O errors across the restart: %v", w.errs)
		}
		w.verify(t, target)
		unstage("first")
	} else {
		if !errorsAre(w.errs, syscall.EIO) {
			t.Errorf("the load's error after the restart: %v, want EIO", w.errs)
		}
		// Kubernetes starts the next pod on the node with a publish at
		// the same staging path, no stage: the volume is staged anew.
		staging, second := filepath.Join(dir, "first", "staging"), filepath.Join(dir, "first", "second")
		_, err := f.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: second, VolumeCapability: c})
		must(t, err)
		w.verify(t, second)
		// The old target still fails; unstage waits for both to go.
		if _, err := f.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); status.Code(err) != codes.FailedPrecondition {
			t.Errorf("unstage with two targets published: %v, want FailedPrecondition", err)
		}
		_, err = f.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: second})
		must(t, err)
		unstage("first")
		w.verify(t, stage("again"))
		unstage("again")
	}
	_, err = f.ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
	must(t, err)
	f.stop()
	mi, err := os.ReadFile("/proc/self/mountinfo")
	must(t, err)
	for line := range strings.Lines(string(mi)) {
		if strings.Contains(line, dir) {
			t.Errorf("left mounted: %s", line)
		}
	}
}

func errorsAre(errs []error, want syscall.Errno) bool {
	for _, err := range errs {
		var e syscall.Errno
		if !errors.As(err, &e) || e != want {
			return false
		}
	}
	return len(errs) > 0
}
