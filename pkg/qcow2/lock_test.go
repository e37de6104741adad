package qcow2_test

// Image locks (lock.go): QEMU's byte-range OFD lock protocol, checked here
// between opens of this engine, in one process (OFD locks of two opens
// conflict there as between processes) and across processes;
// lock_interop_test.go checks it against QEMU's own tools.

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// TestLockSecondWriterRefused: while a writer has an image open, every
// other open that QEMU would refuse without -U is refused with ErrLocked
// and changes nothing: a second writer, a reader, a check, a repair, a
// commit, a rebase, an amend, a live handle. A forced-share reader and a
// forced-share check get in.
func TestLockSecondWriterRefused(t *testing.T) {
	base, top := lockChain(t)
	w := mustOpen(t, top, qcow2.Options{})
	wantHeld(t, "writer", top, writerBytes)
	wantHeld(t, "writer's backing file", base, readerBytes)
	before, err := os.ReadFile(top)
	if err != nil {
		t.Fatal(err)
	}
	baseBefore, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	pol := qcow2.BackingPolicy{}

	_, err = qcow2.Open(top, qcow2.Options{})
	wantLocked(t, "second writer", err)
	if !strings.Contains(err.Error(), `failed to get shared "write" lock`) && !strings.Contains(err.Error(), `failed to get "write" lock`) {
		t.Errorf("error does not name the lock conflict: %v", err)
	}
	_, err = qcow2.Open(top, qcow2.Options{Journal: true})
	wantLocked(t, "second writer with a journal", err)
	if _, err := os.Stat(qcow2.JournalPath(top)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused open left a journal file: %v", err)
	}
	_, err = qcow2.Open(top, qcow2.Options{ReadOnly: true})
	wantLocked(t, "reader", err)
	_, err = qcow2.OpenDisk(top, "qcow2", qcow2.Options{ReadOnly: true, NoBacking: true})
	wantLocked(t, "reader without its chain", err)
	_, err = qcow2.Check(top, qcow2.CheckOptions{})
	wantLocked(t, "check", err)
	_, err = qcow2.Check(top, qcow2.CheckOptions{Repair: qcow2.RepairAll})
	wantLocked(t, "check -r all", err)
	wantLocked(t, "commit", qcow2.Commit(top, pol, false))
	wantLocked(t, "commit -d", qcow2.Commit(top, pol, true))
	wantLocked(t, "rebase", qcow2.Rebase(top, "", "", false, pol))
	wantLocked(t, "rebase -u", qcow2.Rebase(top, "", "", true, pol))
	lazy := true
	wantLocked(t, "amend", qcow2.Amend(top, &lazy))
	wantLocked(t, "amend compat", qcow2.AmendCompat(top, "0.10"))
	_, err = qcow2.OpenLive(top, qcow2.Options{})
	wantLocked(t, "live handle", err)
	// The base is read by the writer's chain: nobody may write it.
	_, err = qcow2.Open(base, qcow2.Options{})
	wantLocked(t, "writer of the backing file", err)

	s := mustOpen(t, top, qcow2.Options{ReadOnly: true, ForceShare: true})
	got := make([]byte, 64<<10)
	if _, err := s.ReadAt(got, 0); err != nil || !bytes.Equal(got, bytes.Repeat([]byte{0x11}, 64<<10)) {
		t.Errorf("forced-share reader reads %x..., %v", got[:4], err)
	}
	closeOrFail(t, s)
	if res, err := qcow2.Check(top, qcow2.CheckOptions{ForceShare: true}); err != nil || res.ExitCode() != 0 {
		t.Errorf("forced-share check: %+v, %v", res, err)
	}
	r := mustOpen(t, base, qcow2.Options{ReadOnly: true})
	closeOrFail(t, r)

	for _, f := range []struct {
		path string
		want []byte
	}{{top, before}, {base, baseBefore}} {
		if now, err := os.ReadFile(f.path); err != nil || !bytes.Equal(now, f.want) {
			t.Errorf("%s changed while a writer held it (%v)", filepath.Base(f.path), err)
		}
	}
	closeOrFail(t, w)
	wantHeld(t, "after Close", top, nil)
	wantHeld(t, "after Close", base, nil)
	closeOrFail(t, mustOpen(t, top, qcow2.Options{}))
}

// TestLockReaders: readers coexist, hold the reader's bytes on the image
// and its backing file, and keep writers out of both; a forced-share
// reader holds only the consistent-read byte, on the whole chain, and
// keeps no one out. Force-share is for read-only opens only.
func TestLockReaders(t *testing.T) {
	base, top := lockChain(t)
	r1 := mustOpen(t, top, qcow2.Options{ReadOnly: true})
	r2 := mustOpen(t, top, qcow2.Options{ReadOnly: true})
	wantHeld(t, "two readers", top, readerBytes)
	wantHeld(t, "two readers' backing file", base, readerBytes)
	_, err := qcow2.Open(top, qcow2.Options{})
	wantLocked(t, "writer while readers", err)
	_, err = qcow2.Open(base, qcow2.Options{})
	wantLocked(t, "writer of a backing file being read", err)
	closeOrFail(t, r1)
	closeOrFail(t, r2)

	s := mustOpen(t, top, qcow2.Options{ReadOnly: true, ForceShare: true})
	wantHeld(t, "forced-share reader", top, sharedBytes)
	wantHeld(t, "forced-share reader's backing file", base, sharedBytes)
	w := mustOpen(t, top, qcow2.Options{})
	closeOrFail(t, w)
	closeOrFail(t, s)

	if _, err := qcow2.Open(top, qcow2.Options{ForceShare: true}); !errors.Is(err, qcow2.ErrInvalid) {
		t.Errorf("writable forced-share open: %v, want ErrInvalid", err)
	}
	if _, err := qcow2.Check(top, qcow2.CheckOptions{ForceShare: true, Repair: qcow2.RepairLeaks}); !errors.Is(err, qcow2.ErrInvalid) {
		t.Errorf("forced-share repair: %v, want ErrInvalid", err)
	}
	wantHeld(t, "after the refused opens", top, nil)
}

// TestLockCrossProcess: a writer in another process keeps this one out
// until it closes the image.
func TestLockCrossProcess(t *testing.T) {
	_, top := lockChain(t)
	release := holdInOtherProcess(t, top)
	wantHeld(t, "the other process's writer", top, writerBytes)
	_, err := qcow2.Open(top, qcow2.Options{})
	wantLocked(t, "writer", err)
	_, err = qcow2.Open(top, qcow2.Options{ReadOnly: true})
	wantLocked(t, "reader", err)
	closeOrFail(t, mustOpen(t, top, qcow2.Options{ReadOnly: true, ForceShare: true}))
	release()
	closeOrFail(t, mustOpen(t, top, qcow2.Options{}))
}

// TestLockCommitIntoReadBacking: commit opens the backing file for
// writing, which a reader of that file (another overlay on the same base,
// open) does not share: the commit is refused and changes nothing; once
// the reader is gone it goes through. The other way round, a backing file
// open for writing (as a commit has it) keeps readers of overlays out.
func TestLockCommitIntoReadBacking(t *testing.T) {
	base, top := lockChain(t)
	other := filepath.Join(filepath.Dir(top), "other.qcow2")
	if err := qcow2.Create(other, qcow2.CreateOptions{BackingFile: "base.qcow2", BackingFormat: "qcow2"}); err != nil {
		t.Fatal(err)
	}
	w := mustOpen(t, top, qcow2.Options{})
	if _, err := w.WriteAt(bytes.Repeat([]byte{0x22}, 4096), 0); err != nil {
		t.Fatal(err)
	}
	closeOrFail(t, w)
	topBefore, _ := os.ReadFile(top)
	baseBefore, _ := os.ReadFile(base)

	r := mustOpen(t, other, qcow2.Options{ReadOnly: true})
	wantLocked(t, "commit into a backing file being read", qcow2.Commit(top, qcow2.BackingPolicy{}, false))
	if a, b := mustRead(t, top), mustRead(t, base); !bytes.Equal(a, topBefore) || !bytes.Equal(b, baseBefore) {
		t.Error("the refused commit changed the image or its backing file")
	}
	closeOrFail(t, r)
	if err := qcow2.Commit(top, qcow2.BackingPolicy{}, false); err != nil {
		t.Fatalf("commit once the reader is gone: %v", err)
	}

	bw := mustOpen(t, base, qcow2.Options{})
	_, err := qcow2.Open(other, qcow2.Options{ReadOnly: true})
	wantLocked(t, "reader of an overlay whose backing file is being written", err)
	if !strings.Contains(err.Error(), "backing file") {
		t.Errorf("error does not say the backing file is locked: %v", err)
	}
	wantHeld(t, "after the refused open", other, nil)
	closeOrFail(t, bw)
}

func mustRead(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestLockDirtyImageUntouched: the lock comes before the first write of
// an open: a dirty image (lazy refcounts, not closed) that a reader holds
// keeps its dirty bit and every byte when a writer is refused (the
// refcount rebuild and the journal would write otherwise).
func TestLockDirtyImageUntouched(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "lazy.qcow2")
	if err := qcow2.Create(p, qcow2.CreateOptions{Size: 1 << 20, LazyRefcounts: true}); err != nil {
		t.Fatal(err)
	}
	w := mustOpen(t, p, qcow2.Options{})
	if _, err := w.WriteAt(bytes.Repeat([]byte{0x33}, 8192), 0); err != nil {
		t.Fatal(err)
	}
	// A copy as a kill leaves it: dirty.
	dirty := filepath.Join(dir, "dirty.qcow2")
	if err := os.WriteFile(dirty, mustRead(t, p), 0o644); err != nil {
		t.Fatal(err)
	}
	closeOrFail(t, w)
	r := mustOpen(t, dirty, qcow2.Options{ReadOnly: true})
	if !r.Info().Dirty {
		t.Fatal("the copy is not dirty")
	}
	before := mustRead(t, dirty)
	_, err := qcow2.Open(dirty, qcow2.Options{Journal: true})
	wantLocked(t, "writer of a dirty image", err)
	if !bytes.Equal(mustRead(t, dirty), before) {
		t.Error("the refused writer changed the dirty image")
	}
	if _, err := os.Stat(qcow2.JournalPath(dirty)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the refused writer created a journal: %v", err)
	}
	closeOrFail(t, r)
	closeOrFail(t, mustOpen(t, dirty, qcow2.Options{}))
}

// TestLockReleasedOnFailedOpen: an open that fails after it took its lock
// (here: the backing file is missing) releases it.
func TestLockReleasedOnFailedOpen(t *testing.T) {
	base, top := lockChain(t)
	if err := os.Remove(base); err != nil {
		t.Fatal(err)
	}
	for _, opts := range []qcow2.Options{{}, {ReadOnly: true}, {Journal: true}} {
		if _, err := qcow2.Open(top, opts); err == nil || errors.Is(err, qcow2.ErrLocked) {
			t.Fatalf("open %+v without its backing file: %v", opts, err)
		}
		wantHeld(t, "after a failed open", top, nil)
	}
	closeOrFail(t, mustOpen(t, top, qcow2.Options{NoBacking: true}))
}

// TestLockNoLock: NoLock takes and checks no image lock (QEMU's
// locking=off); the journal lock still keeps two writers apart.
func TestLockNoLock(t *testing.T) {
	_, top := lockChain(t)
	w := mustOpen(t, top, qcow2.Options{Journal: true})
	r := mustOpen(t, top, qcow2.Options{ReadOnly: true, NoLock: true})
	closeOrFail(t, r)
	_, err := qcow2.Open(top, qcow2.Options{NoLock: true, Journal: true})
	wantLocked(t, "second journaled writer with NoLock", err)
	if err == nil || !strings.Contains(err.Error(), "journal") {
		t.Errorf("error does not name the journal: %v", err)
	}
	closeOrFail(t, w)
	n := mustOpen(t, top, qcow2.Options{NoLock: true})
	wantHeld(t, "NoLock writer", top, nil)
	closeOrFail(t, n)
}

// TestLockRaw: raw images, as top or as backing file, take the same locks.
func TestLockRaw(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "base.raw")
	if err := os.WriteFile(raw, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := qcow2.OpenRaw(raw, false)
	if err != nil {
		t.Fatal(err)
	}
	wantHeld(t, "raw writer", raw, writerBytes)
	_, err = qcow2.OpenRaw(raw, true)
	wantLocked(t, "raw reader", err)
	s, err := qcow2.OpenDisk(raw, "raw", qcow2.Options{ReadOnly: true, ForceShare: true})
	if err != nil {
		t.Fatal(err)
	}
	closeOrFail(t, s)
	closeOrFail(t, w)

	top := filepath.Join(dir, "top.qcow2")
	if err := qcow2.Create(top, qcow2.CreateOptions{BackingFile: "base.raw", BackingFormat: "raw"}); err != nil {
		t.Fatal(err)
	}
	img := mustOpen(t, top, qcow2.Options{})
	wantHeld(t, "raw backing file", raw, readerBytes)
	_, err = qcow2.OpenRaw(raw, false)
	wantLocked(t, "raw writer of a backing file", err)
	closeOrFail(t, img)
	wantHeld(t, "after Close", raw, nil)

	l, err := qcow2.LockFile(raw, qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	wantHeld(t, "LockFile", raw, writerBytes)
	_, err = qcow2.LockFile(raw, qcow2.Options{ReadOnly: true})
	wantLocked(t, "LockFile reader", err)
	closeOrFail(t, l)
	wantHeld(t, "after FileLock.Close", raw, nil)
}

// TestLockCreateProbesBackingShared: creating an overlay reads its backing
// file force-shared, as qemu-img create does: a backing file a writer has
// open may get an overlay (the new one takes effect once it is opened,
// and that open is a reader's).
func TestLockCreateProbesBackingShared(t *testing.T) {
	base, top := lockChain(t)
	w := mustOpen(t, base, qcow2.Options{})
	other := filepath.Join(filepath.Dir(top), "other.qcow2")
	if err := qcow2.Create(other, qcow2.CreateOptions{BackingFile: "base.qcow2", BackingFormat: "qcow2"}); err != nil {
		t.Fatalf("create on a backing file a writer has open: %v", err)
	}
	_, err := qcow2.Open(other, qcow2.Options{})
	wantLocked(t, "open of the new overlay while its backing file is written", err)
	closeOrFail(t, w)
	closeOrFail(t, mustOpen(t, other, qcow2.Options{}))
}

// TestLockFreeze: across a live freeze the volume's file keeps a writer's
// lock and the frozen layer ends with a reader's, like every backing file
// (the process does not conflict with its own locks while it reopens the
// frozen layer); after a failed freeze the old top still holds its
// writer's lock, whichever step failed.
func TestLockFreeze(t *testing.T) {
	s := newFreezeStore(t, 1<<20, qcow2.CreateOptions{ClusterSize: 65536})
	base := s.path("images/base.qcow2")
	live := s.open(t)
	wantHeld(t, "live volume", s.vol, writerBytes)
	wantHeld(t, "live volume's base", base, readerBytes)
	var frozen []string
	check := func(what string) {
		t.Helper()
		wantHeld(t, what+": volume", s.vol, writerBytes)
		wantHeld(t, what+": base", base, readerBytes)
		for _, f := range frozen {
			wantHeld(t, what+": frozen layer", f, readerBytes)
			_, err := qcow2.Open(f, qcow2.Options{Backing: s.opts.Backing})
			wantLocked(t, what+": writer of a frozen layer", err)
			closeOrFail(t, mustOpen(t, f, qcow2.Options{ReadOnly: true, Backing: s.opts.Backing}))
		}
		_, err := qcow2.Open(s.vol, qcow2.Options{ReadOnly: true, Backing: s.opts.Backing})
		wantLocked(t, what+": reader of the volume", err)
		if _, err := live.WriteAt([]byte(what), 0); err != nil {
			t.Fatalf("%s: write: %v", what, err)
		}
	}
	for i := range 2 {
		snap := s.path(filepath.Join("snapshots", string(rune('a'+i))+".qcow2"))
		if err := live.Freeze(snap); err != nil {
			t.Fatal(err)
		}
		frozen = append(frozen, snap)
		check("after freeze " + snap)
	}
	boom := errors.New("injected failure")
	for i, step := range []string{"settled", "linked", "created", "renamed"} {
		snap := s.path(filepath.Join("snapshots", "failed"+string(rune('a'+i))+".qcow2"))
		qcow2.SetFreezeHook(live, func(got string) error {
			if got == step {
				return boom
			}
			return nil
		})
		if err := live.Freeze(snap); !errors.Is(err, boom) {
			t.Fatalf("failure at %s: %v", step, err)
		}
		if step == "renamed" { // the switch was made: snap is frozen
			frozen = append(frozen, snap)
		}
		check("after a freeze failed at " + step)
	}
	closeOrFail(t, live)
	for _, f := range append(frozen, s.vol, base) {
		wantHeld(t, "after Close", f, nil)
	}
}
