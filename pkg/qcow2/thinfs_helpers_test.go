package qcow2_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
	"golang.org/x/sys/unix"
)

// The tests on a testtools.ThinFS run the engine on the real kernel's
// writeback-error semantics, which the modelled Files of the other tests
// (fault_file_test.go, sync_overlap_test.go) only imitate.

const thinCluster = 64 << 10

// thinImage creates an image of size bytes on fs and gives the first
// hostBytes of its file host blocks (unwritten extents) and makes them
// durable, while the storage has room. Writing back data there then
// changes no filesystem metadata, whose failures the device would report
// as EIO to nobody in particular: after Fill, what fails is the image's
// own pages, with ENOSPC, reported to the image's descriptor.
func thinImage(t *testing.T, fs *testtools.ThinFS, size, hostBytes int64) string {
	t.Helper()
	path := filepath.Join(fs.Dir, "thin.qcow2")
	if err := qcow2.Create(path, qcow2.CreateOptions{Size: size}); err != nil {
		t.Fatal(err)
	}
	if hostBytes > 0 {
		reserveHostBlocks(t, path, hostBytes)
	}
	return path
}

// reserveHostBlocks allocates host blocks for the first n bytes of the
// file at path without changing its size, and makes that durable.
func reserveHostBlocks(t *testing.T, path string, n int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_KEEP_SIZE, 0, n); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fsync(int(f.Fd())); err != nil {
		t.Fatal(err)
	}
}

// cluster is what the tests write into guest cluster c, in their
// generation gen (not 0: never zeros, which unallocated clusters read).
func cluster(c int64, gen byte) []byte {
	return bytes.Repeat([]byte{gen, byte(c)}, thinCluster/2)
}

func requireGuest(t *testing.T, img *qcow2.Image, want []byte, off int64, what string) {
	t.Helper()
	got := make([]byte, len(want))
	if _, err := img.ReadAt(got, off); err != nil {
		t.Fatalf("%s: read at %d: %v", what, off, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: guest offset %d reads %#x..., want %#x...", what, off, got[:4], want[:4])
	}
}

// requireSyncFailed requires err to be the sticky sync failure, caused by
// a lost writeback (ENOSPC).
func requireSyncFailed(t *testing.T, err error, what string) {
	t.Helper()
	if !errors.Is(err, qcow2.ErrSyncFailed) || !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("%s: %v, want ErrSyncFailed wrapping ENOSPC", what, err)
	}
}

// hostSpy stands between the engine's sync guard and the image's host
// file: it records the first failed call, so that a test can require the
// path it means to exercise, and can hold a sync (holdNextSync).
type hostSpy struct {
	qcow2.File

	mu       sync.Mutex
	firstOp  string // "write", "durable" (RWF_DSYNC) or "sync"
	firstOff int64
	firstErr error

	held    chan error    // the next sync reports its result here...
	release chan struct{} // ...and returns once this is closed (releaseHeld)
	once    sync.Once
	synced  atomic.Int32 // syncs that returned after the held one began
}

// spyOn returns opts whose open of path puts a hostSpy under the guard.
func spyOn(path string, opts qcow2.Options) (*hostSpy, qcow2.Options) {
	spy := &hostSpy{}
	wrap := func(p string, f qcow2.File) qcow2.File {
		if p != path {
			return f
		}
		spy.File = f
		return spy
	}
	return spy, qcow2.WithFileHooks(opts, wrap, nil)
}

// Unwrap lets the engine reach the host file (its FADV_DONTNEED at open).
func (s *hostSpy) Unwrap() qcow2.File { return s.File }

func (s *hostSpy) record(op string, off int64, err error) error {
	if err != nil {
		s.mu.Lock()
		if s.firstErr == nil {
			s.firstOp, s.firstOff, s.firstErr = op, off, err
		}
		s.mu.Unlock()
	}
	return err
}

// first returns the first failed call.
func (s *hostSpy) first() (op string, off int64, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.firstOp, s.firstOff, s.firstErr
}

func (s *hostSpy) WriteAt(p []byte, off int64) (int, error) {
	n, err := s.File.WriteAt(p, off)
	return n, s.record("write", off, err)
}

// WriteAtDurable passes the guard's durable writes on to the host file's
// pwritev2(RWF_DSYNC).
func (s *hostSpy) WriteAtDurable(p []byte, off int64) error {
	d, ok := s.File.(interface{ WriteAtDurable([]byte, int64) error })
	if !ok {
		panic("the host file has no WriteAtDurable")
	}
	return s.record("durable", off, d.WriteAtDurable(p, off))
}

// holdNextSync makes the next sync report what it returned on the
// returned channel and return only once release is closed; the syncs
// after it count in synced.
func (s *hostSpy) holdNextSync() <-chan error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.held, s.release = make(chan error, 1), make(chan struct{})
	return s.held
}

// releaseHeld lets the held sync return; a test defers it, so that a
// failure does not leave the image's syncs blocked behind it.
func (s *hostSpy) releaseHeld() { s.once.Do(func() { close(s.release) }) }

func (s *hostSpy) Sync() error {
	err := s.record("sync", 0, s.File.Sync())
	s.mu.Lock()
	held, release := s.held, s.release
	s.held = nil
	s.mu.Unlock()
	if held != nil {
		held <- err
		<-release
	} else if release != nil {
		s.synced.Add(1)
	}
	return err
}

// parkedInFlush reports whether a goroutine waits on a lock or condition
// inside Image.Flush: a Flush that a sync in progress keeps out.
func parkedInFlush() bool {
	buf := make([]byte, 1<<16)
	for n := runtime.Stack(buf, true); ; n = runtime.Stack(buf, true) {
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf)) // all goroutines did not fit
	}
	for _, g := range strings.Split(string(buf), "\n\n") {
		header, _, _ := strings.Cut(g, "\n")
		waiting := strings.Contains(header, "[sync.") || strings.Contains(header, "[semacquire")
		if waiting && strings.Contains(g, "qcow2.(*Image).Flush(") {
			return true
		}
	}
	return false
}

// openSpiedFlushed opens the image at path behind a hostSpy, with cluster
// 0 written and flushed: what every thin-filesystem test starts from.
func openSpiedFlushed(t *testing.T, path string) (*qcow2.Image, *hostSpy) {
	t.Helper()
	spy, opts := spyOn(path, qcow2.Options{})
	return openFlushed(t, path, opts), spy
}

// openFlushed opens the image at path with opts, with cluster 0 written
// and flushed.
func openFlushed(t *testing.T, path string, opts qcow2.Options) *qcow2.Image {
	t.Helper()
	img, err := qcow2.Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := img.WriteAt(cluster(0, 1), 0); err != nil {
		t.Fatal(err)
	}
	if err := img.Flush(); err != nil {
		t.Fatal(err)
	}
	return img
}

// closeAndReadBack closes img, drops the file's cached pages and opens it
// read-only again: what the disk holds. The caller closes what it gets.
func closeAndReadBack(t *testing.T, img *qcow2.Image, path string) *qcow2.Image {
	t.Helper()
	mustClose(t, img)
	testtools.DropCache(t, path)
	ro, err := qcow2.Open(path, qcow2.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	return ro
}
