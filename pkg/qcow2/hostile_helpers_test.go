package qcow2

import (
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// Helpers of the hostile-image suite for opens (hostile_*_test.go). Each
// open of a hostile image is measured: the bytes it allocated are asserted
// (allocation accounting, independent of the machine's speed); its wall
// time is only logged, for the record.

// openCost runs fn once and returns its error, the bytes allocated
// meanwhile (runtime.MemStats.TotalAlloc counts every allocation, so it
// bounds how far the heap grew) and the wall time.
func openCost(fn func() error) (err error, alloc uint64, took time.Duration) {
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	err = fn()
	took = time.Since(start)
	runtime.ReadMemStats(&after)
	return err, after.TotalAlloc - before.TotalAlloc, took
}

// tryOpen returns a function that opens path under opts and closes the
// image again if that worked.
func tryOpen(path string, opts Options) func() error {
	return func() error {
		img, err := Open(path, opts)
		if err == nil {
			img.Close()
		}
		return err
	}
}

// wantRefused runs fn and fails the test unless it returns an error
// wrapping class whose message contains every string of says, having
// allocated at most maxAlloc bytes. It logs the figures.
func wantRefused(t *testing.T, fn func() error, class error, maxAlloc uint64, says ...string) error {
	t.Helper()
	err, alloc, took := openCost(fn)
	t.Logf("open returned after %v, %.2f MiB allocated: %v", took, float64(alloc)/(1<<20), err)
	if err == nil {
		t.Fatal("opened")
	}
	if !errors.Is(err, class) {
		t.Errorf("error %v does not wrap %v", err, class)
	}
	for _, s := range says {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not say %q", err, s)
		}
	}
	if alloc > maxAlloc {
		t.Errorf("the refused open allocated %d bytes, more than %d", alloc, maxAlloc)
	}
	return err
}

// digest hashes the file at path, to show that a refused open wrote
// nothing.
func digest(t *testing.T, path string) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return [32]byte(h.Sum(nil))
}

// setDirty sets the dirty bit of the version 3 image at path, so that a
// writable open would rebuild its refcounts (a write) first thing.
func setDirty(t *testing.T, path string) {
	t.Helper()
	patchFile(t, path, hdrOffIncompat, be64(incompatDirty))
}

// wantUnchangedAfterWritableOpen opens path writable (dirty, so that an
// open that got far enough would have written), expects a refusal of
// class, and checks the file is byte for byte what it was.
func wantUnchangedAfterWritableOpen(t *testing.T, path string, opts Options, class error) {
	t.Helper()
	setDirty(t, path)
	before := digest(t, path)
	opts.ReadOnly = false
	if err := tryOpen(path, opts)(); !errors.Is(err, class) {
		t.Fatalf("writable open: %v, want %v", err, class)
	}
	if digest(t, path) != before {
		t.Fatal("a refused writable open changed the image")
	}
}
