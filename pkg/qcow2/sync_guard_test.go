package qcow2_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// flakyFile fails its next Sync, or its next WriteAt, once.
type flakyFile struct {
	qcow2.File
	failSync, failWrite atomic.Pointer[syscall.Errno]
}

func (f *flakyFile) Sync() error {
	if e := f.failSync.Swap(nil); e != nil {
		return *e
	}
	return f.File.Sync()
}

func (f *flakyFile) WriteAt(p []byte, off int64) (int, error) {
	if e := f.failWrite.Swap(nil); e != nil {
		return 0, *e
	}
	return f.File.WriteAt(p, off)
}

func errnoPtr(e syscall.Errno) *syscall.Errno { return &e }

// openFlaky opens the image at path with its file (not its journal)
// behind a flakyFile.
func openFlaky(t *testing.T, path string, opts qcow2.Options) (*qcow2.Image, *flakyFile) {
	t.Helper()
	var ff *flakyFile
	wrap := func(p string, f qcow2.File) qcow2.File {
		if p != path {
			return f
		}
		ff = &flakyFile{File: f}
		return ff
	}
	img, err := qcow2.Open(path, qcow2.WithFileHooks(opts, wrap, nil))
	if err != nil {
		t.Fatal(err)
	}
	return img, ff
}

func TestFailedSyncIsSticky(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.qcow2")
	if err := qcow2.Create(path, qcow2.CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	img, ff := openFlaky(t, path, qcow2.Options{})
	data := bytes.Repeat([]byte{7}, 4096)
	if _, err := img.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if err := img.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := img.WriteAt(data, 65536); err != nil {
		t.Fatal(err)
	}
	ff.failSync.Store(errnoPtr(syscall.EIO))
	err := img.Flush()
	if !errors.Is(err, qcow2.ErrSyncFailed) || !errors.Is(err, syscall.EIO) {
		t.Fatalf("flush with a failing sync: %v", err)
	}
	// The host file would sync now; what the failed sync lost would not
	// be on disk though, so the image must keep saying so.
	if err := img.Flush(); !errors.Is(err, qcow2.ErrSyncFailed) {
		t.Fatalf("second flush: %v", err)
	}
	if _, err := img.WriteAt(data, 0); !errors.Is(err, qcow2.ErrSyncFailed) {
		t.Fatalf("write after the failed sync: %v", err)
	}
	if err := img.WriteZeroes(0, 4096, false); !errors.Is(err, qcow2.ErrSyncFailed) {
		t.Fatalf("zeroing after the failed sync: %v", err)
	}
	got := make([]byte, 4096)
	if _, err := img.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("reads go on: %v", err)
	}
	if err := img.Close(); !errors.Is(err, qcow2.ErrSyncFailed) {
		t.Fatalf("close: %v", err)
	}
	img, err = qcow2.Open(path, qcow2.Options{})
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	if _, err := img.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("flushed data after the reopen: %v", err)
	}
	if _, err := img.WriteAt(data, 0); err != nil {
		t.Fatalf("a reopened image takes writes: %v", err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	res, err := qcow2.Check(path, qcow2.CheckOptions{})
	if err != nil || res.Corruptions != 0 || res.CheckErrors != 0 {
		t.Fatalf("check: %+v %v", res, err)
	}
}

// A full filesystem fails the write that could not be stored, and the
// image works again once there is space: ENOSPC from a write is not
// sticky.
func TestFailedWriteIsNotSticky(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.qcow2")
	if err := qcow2.Create(path, qcow2.CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	img, ff := openFlaky(t, path, qcow2.Options{})
	defer img.Close()
	data := bytes.Repeat([]byte{9}, 4096)
	ff.failWrite.Store(errnoPtr(syscall.ENOSPC))
	if _, err := img.WriteAt(data, 0); !errors.Is(err, syscall.ENOSPC) || errors.Is(err, qcow2.ErrSyncFailed) {
		t.Fatalf("write on a full filesystem: %v", err)
	}
	if _, err := img.WriteAt(data, 0); err != nil {
		t.Fatalf("write once there is space: %v", err)
	}
	if err := img.Flush(); err != nil {
		t.Fatal(err)
	}
}

// A writeback error that nobody saw before the writer was killed is
// reported to the first sync of the next open: the journal's records may
// map clusters whose data is lost, so that open fails, and no later open
// replays them.
func TestUnseenWritebackErrorDiscardsJournal(t *testing.T) {
	base := bytes.Repeat([]byte{0x5a}, 1<<20)
	dir, path := overlayOn(t, base, qcow2.CreateOptions{})
	img, err := qcow2.Open(path, qcow2.WithBoot(qcow2.Options{Journal: true}, bootA))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := img.WriteAt(bytes.Repeat([]byte{1}, 4096), 0); err != nil {
		t.Fatal(err)
	}
	killed := copyKilled(t, dir)
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	if !journalHoldsRecords(t, killed) {
		t.Fatal("the write did not reach the journal: the test proves nothing")
	}
	var ff *flakyFile
	wrap := func(p string, f qcow2.File) qcow2.File {
		if p == killed {
			ff = &flakyFile{File: f}
			ff.failSync.Store(errnoPtr(syscall.EIO))
			return ff
		}
		return f
	}
	if _, err := qcow2.Open(killed, qcow2.WithFileHooks(qcow2.WithBoot(qcow2.Options{Journal: true}, bootA), wrap, nil)); !errors.Is(err, syscall.EIO) {
		t.Fatalf("open with a failing first sync: %v", err)
	}
	requireReadsAndChecks(t, base, qcow2.WithBoot(qcow2.Options{}, bootA), killed)
}

// journalHoldsRecords reports whether the journal of the image at path
// is longer than its header.
func journalHoldsRecords(t *testing.T, path string) bool {
	t.Helper()
	st, err := os.Stat(qcow2.JournalPath(path))
	return err == nil && st.Size() > 4096
}
