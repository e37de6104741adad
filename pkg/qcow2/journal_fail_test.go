package qcow2_test

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"sync/atomic"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// failAfterWrite is a journal file whose next write of more than one
// record, once armed, is done and then reported failed: what a short
// write ending in ENOSPC or EIO leaves.
type failAfterWrite struct {
	qcow2.File
	arm *atomic.Bool
}

func (f failAfterWrite) WriteAt(p []byte, off int64) (int, error) {
	n, err := f.File.WriteAt(p, off)
	if err == nil && len(p) > 40 && f.arm.CompareAndSwap(true, false) {
		return n, errors.New("injected journal write error")
	}
	return n, err
}

// TestJournalWriteErrorIsSticky: a failed write to the journal may leave
// valid records past the journal's end as the engine counts it. Were the
// image to go on, a later, shorter batch would overwrite only the first of
// them and a replay after a kill would apply the rest over newer
// mappings. So the failure is sticky: no more writes, no Flush; and a kill
// after it leaves an image that replays to the old content or the failed
// write's, and checks clean. (Found in review of issue 9, item 1.)
func TestJournalWriteErrorIsSticky(t *testing.T) {
	const cs, size = 4096, 8 << 20
	base := make([]byte, size)
	fillRandom(rand.New(rand.NewPCG(1, 1)), base)
	dir, path := overlayOn(t, base, qcow2.CreateOptions{ClusterSize: cs})
	fh, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	jfh, err := os.OpenFile(qcow2.JournalPath(path), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	var arm atomic.Bool
	img, err := qcow2.OpenFile(qcow2.NewOSFile(fh), path,
		qcow2.WithJournal(qcow2.Options{}, failAfterWrite{qcow2.NewOSFile(jfh), &arm}, bootA))
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	// Clusters 511 and 512 (two L2 tables at 4 KiB clusters) over backing
	// data: one batch of two journal records.
	failed := bytes.Repeat([]byte{0xf1}, 2*cs)
	arm.Store(true)
	if _, err := img.WriteAt(failed, 511*cs); err == nil {
		t.Fatal("the injected journal error did not reach the caller")
	}
	if _, err := img.WriteAt(bytes.Repeat([]byte{0x22}, cs), 100*cs); err == nil {
		t.Fatal("a write after a failed journal write was accepted")
	}
	if _, err := img.WriteAt(bytes.Repeat([]byte{0x33}, 512), 511*cs); err == nil {
		t.Fatal("an in-place write after a failed journal write was accepted")
	}
	if err := img.Flush(); err == nil {
		t.Fatal("Flush after a failed journal write succeeded")
	}

	killed := copyKilled(t, dir)
	got := readAll(t, killed, qcow2.WithBoot(qcow2.Options{}, bootA))
	for b := range got {
		inFailed := b >= 511*cs && b < 513*cs
		if got[b] != base[b] && !(inFailed && got[b] == 0xf1) {
			t.Fatalf("after the kill, guest byte %d reads %#x: neither the old %#x nor the failed write's", b, got[b], base[b])
		}
	}
	res, err := qcow2.Check(killed, qcow2.CheckOptions{})
	if err != nil || res.Corruptions != 0 || res.CheckErrors != 0 {
		t.Fatalf("check after the kill: %+v, %v", res, err)
	}
}
