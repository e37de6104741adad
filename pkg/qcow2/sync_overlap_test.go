package qcow2_test

import (
	"bytes"
	"errors"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// overlapFile models two fdatasyncs of one descriptor that overlap a
// failing writeback, as Linux reports it (file_check_and_advance_wb_err,
// shown on a real kernel by TestKernelConcurrentSyncsReportOnce): the
// first to look at the file's errseq gets the error, the other gets 0 (the
// pages are clean by then, so it has nothing left to write).
type overlapFile struct {
	qcow2.File
	armed atomic.Bool
	calls atomic.Int32
	bIn   chan struct{} // the second sync has entered the kernel
	aOut  chan struct{} // the first has returned the error
}

func (f *overlapFile) Sync() error {
	if !f.armed.Load() {
		return f.File.Sync()
	}
	switch f.calls.Add(1) {
	case 1:
		select {
		case <-f.bIn:
		case <-time.After(500 * time.Millisecond): // a guard that serializes syncs keeps B out
		}
		defer close(f.aOut)
		return syscall.EIO
	case 2:
		close(f.bIn)
		<-f.aOut
		return nil
	}
	return f.File.Sync()
}

// TestOverlappingFlushesAfterLostWriteback: two Flushes (an NBD flush and
// a FUA write, each in its own goroutine) overlap a writeback that loses
// a write both cover. The guard checks its sticky error before the
// syscall and records it after, so the Flush whose fdatasync the kernel
// answered with 0 returns success.
func TestOverlappingFlushesAfterLostWriteback(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.qcow2")
	if err := qcow2.Create(path, qcow2.CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	of := &overlapFile{bIn: make(chan struct{}), aOut: make(chan struct{})}
	wrap := func(p string, f qcow2.File) qcow2.File {
		if p != path {
			return f
		}
		of.File = f
		return of
	}
	img, err := qcow2.Open(path, qcow2.WithFileHooks(qcow2.Options{}, wrap, nil))
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if _, err := img.WriteAt(bytes.Repeat([]byte{1}, 4096), 0); err != nil {
		t.Fatal(err)
	}
	if err := img.Flush(); err != nil {
		t.Fatal(err)
	}
	// The guest write both flushes cover (in place: no metadata).
	if _, err := img.WriteAt(bytes.Repeat([]byte{2}, 4096), 0); err != nil {
		t.Fatal(err)
	}
	of.armed.Store(true)
	var wg sync.WaitGroup
	var errs [2]error
	for i := range errs {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = img.Flush() }()
	}
	wg.Wait()
	t.Logf("flushes: %v / %v", errs[0], errs[1])
	for _, err := range errs {
		if err == nil {
			t.Fatalf("a Flush succeeded although the writeback of the write it covers failed (the other got %v)", errors.Join(errs[:]...))
		}
	}
}
