package qcow2_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"syscall"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// TestPoisonedJournalRestartsGenerations: the poison zeroes the journal
// header, so the next open's discard restarts the generations at 1 and
// the next writer at 2, over a file that still holds the poisoned
// writer's records of generation 2. When that writer is killed with fewer
// records than the old ones, a same-boot replay reads its own records and
// then the stale ones, which map clusters the discard freed.
func TestPoisonedJournalRestartsGenerations(t *testing.T) {
	const cs = 65536
	base := bytes.Repeat([]byte{0x5a}, 1<<20)
	dir, path := overlayOn(t, base, qcow2.CreateOptions{})
	opts := qcow2.WithBoot(qcow2.Options{Journal: true}, bootA)

	// Writer 1: one checkpoint (generation 2), four journaled writes, then
	// a failed sync: sticky, and the journal is poisoned.
	img, ff := openFlaky(t, path, opts)
	want := bytes.Clone(base)
	put := func(img *qcow2.Image, off int64, v byte) {
		t.Helper()
		b := bytes.Repeat([]byte{v}, 4096)
		if _, err := img.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
		copy(want[off:], b)
	}
	put(img, 0, 1)
	if err := img.Flush(); err != nil {
		t.Fatal(err)
	}
	for c := int64(1); c <= 4; c++ {
		put(img, c*cs, byte(0x10+c))
	}
	ff.failSync.Store(errnoPtr(syscall.EIO))
	if err := img.Flush(); !errors.Is(err, qcow2.ErrSyncFailed) {
		t.Fatalf("flush: %v", err)
	}
	img.Close()
	// Those four writes were never flushed: either content is allowed;
	// this test keeps the one a discard gives (the base).
	for c := int64(1); c <= 4; c++ {
		copy(want[c*cs:(c+1)*cs], base[c*cs:(c+1)*cs])
	}

	// Writer 2, same boot: the open discards the poisoned journal (and
	// rebuilds the refcounts, freeing writer 1's clusters); one
	// journaled write, then a kill.
	img, err := qcow2.Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	for c := int64(1); c <= 4; c++ {
		got := make([]byte, 4096)
		img.ReadAt(got, c*cs)
		if !bytes.Equal(got, base[c*cs:c*cs+4096]) {
			t.Fatalf("cluster %d: the discard kept writer 1's unflushed write (fine, but this test assumes the base)", c)
		}
	}
	put(img, 4*cs, 0x44) // acknowledged: a kill must keep it
	killed := copyKilled(t, dir)
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	got := readAll(t, killed, qcow2.WithBoot(qcow2.Options{}, bootA))
	for c := int64(0); c < 16; c++ {
		if !bytes.Equal(got[c*cs:(c+1)*cs], want[c*cs:(c+1)*cs]) {
			t.Errorf("after the kill and a same-boot replay, cluster %d reads %#x, want %#x", c, got[c*cs], want[c*cs])
		}
	}
	res, err := qcow2.Check(killed, qcow2.CheckOptions{})
	if err != nil || res.Corruptions != 0 || res.CheckErrors != 0 {
		t.Errorf("check: %+v %v", res, err)
	}
}

// TestPoisonedJournalWithoutBitRestartsGenerations: the same through the
// other door. The failed sync lost the header page that carried the
// journal bit (it reads as on disk once the clean page is evicted, or at
// an open that drops clean pages), so the next open does not settle the
// journal at all: startJournal finds the poisoned header, starts at
// generation 1, and the first writer's generation-1 records lie past the
// new ones.
func TestPoisonedJournalWithoutBitRestartsGenerations(t *testing.T) {
	const cs = 65536
	base := bytes.Repeat([]byte{0x5a}, 1<<20)
	dir, path := overlayOn(t, base, qcow2.CreateOptions{})
	opts := qcow2.WithBoot(qcow2.Options{Journal: true}, bootA)
	img, ff := openFlaky(t, path, opts)
	for c := int64(1); c <= 4; c++ {
		if _, err := img.WriteAt(bytes.Repeat([]byte{byte(0x10 + c)}, 4096), c*cs); err != nil {
			t.Fatal(err)
		}
	}
	ff.failSync.Store(errnoPtr(syscall.EIO))
	if err := img.Flush(); !errors.Is(err, qcow2.ErrSyncFailed) {
		t.Fatalf("flush: %v", err)
	}
	img.Close()
	// The header as the disk has it: the bit's write was never synced.
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	var b [8]byte
	f.ReadAt(b[:], 72)
	binary.BigEndian.PutUint64(b[:], binary.BigEndian.Uint64(b[:])&^(1<<63))
	f.WriteAt(b[:], 72)
	f.Close()

	img, err = qcow2.Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	w := bytes.Repeat([]byte{0x44}, 4096)
	if _, err := img.WriteAt(w, 4*cs); err != nil {
		t.Fatal(err)
	}
	killed := copyKilled(t, dir)
	img.Close()
	got := readAll(t, killed, qcow2.WithBoot(qcow2.Options{}, bootA))
	want := bytes.Clone(base)
	copy(want[4*cs:], w)
	for c := int64(0); c < 16; c++ {
		if !bytes.Equal(got[c*cs:(c+1)*cs], want[c*cs:(c+1)*cs]) {
			t.Errorf("after the kill and a same-boot replay, cluster %d reads %#x, want %#x", c, got[c*cs], want[c*cs])
		}
	}
}
