package qcow2_test

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// Tests of the write journal (journal.go): copy-on-write writes do not
// sync; a killed process loses nothing (the journal is replayed); after a
// reboot the journal is discarded and the image reads as the last Flush
// left it; QEMU refuses an image while its journal holds mappings.

var (
	bootA = [16]byte{1, 2, 3}
	bootB = [16]byte{9, 9, 9}
)

// syncCounter counts a File's Syncs.
type syncCounter struct {
	qcow2.File
	n *atomic.Int64
}

func (s syncCounter) Sync() error { s.n.Add(1); return s.File.Sync() }

// WriteAtDurable passes RWF_DSYNC writes through (they flush nothing else).
func (s syncCounter) WriteAtDurable(p []byte, off int64) error {
	if d, ok := s.File.(interface {
		WriteAtDurable(p []byte, off int64) error
	}); ok {
		return d.WriteAtDurable(p, off)
	}
	if _, err := s.File.WriteAt(p, off); err != nil {
		return err
	}
	return s.Sync()
}

// journalFixture is an overlay on a raw base of random data, opened with a
// journal, and the guest content the test expects.
type journalFixture struct {
	dir, path string
	img       *qcow2.Image
	want      []byte
	syncs     atomic.Int64
}

const journalDisk = 4 << 20

func newJournalFixture(t *testing.T, cs int64) *journalFixture {
	return newJournalFixtureBoot(t, cs, bootA)
}

func newJournalFixtureBoot(t *testing.T, cs int64, boot [16]byte) *journalFixture {
	t.Helper()
	fx := &journalFixture{dir: t.TempDir()}
	fx.want = make([]byte, journalDisk)
	fillRandom(rand.New(rand.NewPCG(1, 2)), fx.want)
	if err := os.WriteFile(filepath.Join(fx.dir, "base.raw"), fx.want, 0o644); err != nil {
		t.Fatal(err)
	}
	fx.path = filepath.Join(fx.dir, "top.qcow2")
	if err := qcow2.Create(fx.path, qcow2.CreateOptions{ClusterSize: cs, BackingFile: "base.raw", BackingFormat: "raw"}); err != nil {
		t.Fatal(err)
	}
	fx.img = fx.open(t, boot)
	return fx
}

// open opens the image with its journal, as the given boot.
func (fx *journalFixture) open(t *testing.T, boot [16]byte) *qcow2.Image {
	t.Helper()
	fh, err := os.OpenFile(fx.path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	jf, err := os.OpenFile(qcow2.JournalPath(fx.path), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	img, err := qcow2.OpenFile(syncCounter{qcow2.NewOSFile(fh), &fx.syncs}, fx.path,
		qcow2.WithJournal(qcow2.Options{}, qcow2.NewOSFile(jf), boot))
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// write writes n bytes of fresh random data at off, in the image and in want.
func (fx *journalFixture) write(t *testing.T, rng *rand.Rand, off, n int64) {
	t.Helper()
	buf := make([]byte, n)
	fillRandom(rng, buf)
	if _, err := fx.img.WriteAt(buf, off); err != nil {
		t.Fatalf("WriteAt(%d, +%d): %v", off, n, err)
	}
	copy(fx.want[off:], buf)
}

// killCopy copies the image and its journal as a kill -9 would leave them
// (the files as the kernel has them) to a new directory with the base.
func (fx *journalFixture) killCopy(t *testing.T) string {
	t.Helper()
	return copyKilled(t, fx.dir)
}

func fillRandom(rng *rand.Rand, b []byte) {
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
}

func readAll(t *testing.T, path string, opts qcow2.Options) []byte {
	t.Helper()
	img, err := qcow2.Open(path, opts)
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	defer img.Close()
	got := make([]byte, img.Size())
	if _, err := img.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	return got
}

func qemuCheckClean(t *testing.T, qemuImg, path string) {
	t.Helper()
	out, err := exec.Command(qemuImg, "check", path).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "leaked clusters") {
		t.Fatalf("qemu-img check %s: %v\n%s", path, err, out)
	}
}

func TestJournalCOWWritesDoNotSync(t *testing.T) {
	fx := newJournalFixture(t, 64<<10)
	rng := rand.New(rand.NewPCG(3, 4))
	before := fx.syncs.Load()
	for c := int64(0); c < 40; c++ {
		fx.write(t, rng, c*(64<<10)+4096*rng.Int64N(16), 4096)
	}
	// Reservations may sync (their refcounts); a copy-on-write per
	// write would make it 40 or more.
	if n := fx.syncs.Load() - before; n > 4 {
		t.Fatalf("40 copy-on-write writes synced %d times", n)
	}
	got := make([]byte, journalDisk)
	if _, err := fx.img.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, fx.want) {
		t.Fatal("live image reads differ from what was written")
	}
	if err := fx.img.Close(); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, fx.path, qcow2.Options{ReadOnly: true}); !bytes.Equal(got, fx.want) {
		t.Fatal("image after close differs")
	}
	qemuCheckClean(t, testtools.Need(t, "qemu-img")[0], fx.path)
}

func TestJournalKillReplaysAndRebootDiscards(t *testing.T) {
	for _, ext := range []bool{false, true} {
		name := "standard"
		if ext {
			name = "extended-l2"
		}
		t.Run(name, func(t *testing.T) { testJournalKill(t, ext) })
	}
}

func testJournalKill(t *testing.T, ext bool) {
	qemuImg := testtools.Need(t, "qemu-img")[0]
	fx := newJournalFixture(t, 64<<10)
	if ext {
		fx.img.Close()
		os.Remove(fx.path)
		if err := qcow2.Create(fx.path, qcow2.CreateOptions{ClusterSize: 64 << 10, ExtendedL2: true, BackingFile: "base.raw", BackingFormat: "raw"}); err != nil {
			t.Fatal(err)
		}
		fx.img = fx.open(t, bootA)
	}
	rng := rand.New(rand.NewPCG(5, 6))
	for range 30 {
		fx.write(t, rng, rng.Int64N(journalDisk-8192)&^511, 512*(1+rng.Int64N(16)))
	}
	if err := fx.img.Flush(); err != nil {
		t.Fatal(err)
	}
	flushed := bytes.Clone(fx.want)
	for range 50 {
		// Fresh clusters (copy-on-write) and rewrites of clusters whose
		// mapping is in the journal only.
		fx.write(t, rng, rng.Int64N(journalDisk-8192)&^511, 512*(1+rng.Int64N(16)))
	}
	killed := fx.killCopy(t)

	// QEMU must refuse the killed image: its L2 tables lack acknowledged
	// mappings.
	if out, err := exec.Command(qemuImg, "info", killed).CombinedOutput(); err == nil {
		t.Fatalf("qemu-img info opened an image with journal-only mappings:\n%s", out)
	}
	// So do the engine's check and a backing-less open by file.
	if _, err := qcow2.Check(killed, qcow2.CheckOptions{}); !errors.Is(err, qcow2.ErrJournalPending) {
		t.Fatalf("Check of a killed image: %v, want ErrJournalPending", err)
	}

	// Same boot, read-only: the journal's mappings show, nothing is written.
	before, _ := os.ReadFile(killed)
	if got := readAll(t, killed, qcow2.WithBoot(qcow2.Options{ReadOnly: true}, bootA)); !bytes.Equal(got, fx.want) {
		t.Fatal("read-only open of the killed image (same boot) lost acknowledged writes")
	}
	if after, _ := os.ReadFile(killed); !bytes.Equal(before, after) {
		t.Fatal("a read-only open changed the image")
	}

	// Another boot: the journal is discarded. Every byte reads as the
	// last Flush left it or as a later write left it (in-place writes to
	// clusters mapped before the Flush are in the file); every cluster
	// first written after the Flush reads as before.
	rebooted := fx.killCopy(t)
	got := readAll(t, rebooted, qcow2.WithBoot(qcow2.Options{}, bootB))
	for b := range got {
		if got[b] != flushed[b] && got[b] != fx.want[b] {
			t.Fatalf("after a reboot guest byte %d reads %#x: neither the flushed %#x nor the latest %#x", b, got[b], flushed[b], fx.want[b])
		}
	}
	if bytes.Equal(got, fx.want) {
		t.Fatal("after a reboot the journal's mappings were applied")
	}
	// The clusters the discarded records had taken are returned.
	if res, err := qcow2.Check(rebooted, qcow2.CheckOptions{}); err != nil || res.Leaks != 0 || res.Corruptions != 0 {
		t.Fatalf("after the discard: %+v, %v", res, err)
	}
	qemuCheckClean(t, qemuImg, rebooted)

	// Same boot, writable: replayed, the bit cleared, the journal gone.
	if got := readAll(t, killed, qcow2.WithBoot(qcow2.Options{}, bootA)); !bytes.Equal(got, fx.want) {
		t.Fatal("writable open of the killed image (same boot) lost acknowledged writes")
	}
	qemuCheckClean(t, qemuImg, killed)
	out, err := exec.Command(qemuImg, "compare", "-f", "qcow2", "-F", "raw", killed, writeRaw(t, fx.want)).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img compare after replay: %v\n%s", err, out)
	}
	fx.img.Close()
}

func writeRaw(t *testing.T, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "want.raw")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestJournalRepairAppliesIt(t *testing.T) {
	fx := newJournalFixtureBoot(t, 64<<10, qcow2.HostBoot())
	rng := rand.New(rand.NewPCG(7, 8))
	for range 20 {
		fx.write(t, rng, rng.Int64N(journalDisk-4096)&^4095, 4096)
	}
	killed := fx.killCopy(t)
	fx.img.Close()
	// The repair applies the journal first (this host's boot, as the
	// copy was made in this boot), so nothing is counted as a leak.
	// The leaks are the kill's unused reservation, never the journal's
	// clusters: the content survives the repair.
	res, err := qcow2.Check(killed, qcow2.CheckOptions{Repair: qcow2.RepairLeaks})
	if err != nil {
		t.Fatal(err)
	}
	if res.Leaks != 0 || res.Corruptions != 0 {
		t.Fatalf("check -r leaks after replay: %+v", res)
	}
	if got := readAll(t, killed, qcow2.Options{ReadOnly: true}); !bytes.Equal(got, fx.want) {
		t.Fatal("the repaired image lost writes the journal held")
	}
}

func TestJournalOpenByPath(t *testing.T) {
	fx := newJournalFixture(t, 64<<10)
	fx.img.Close()
	os.Remove(qcow2.JournalPath(fx.path))
	img, err := qcow2.Open(fx.path, qcow2.WithBoot(qcow2.Options{Journal: true}, bootA))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := img.WriteAt(bytes.Repeat([]byte{7}, 4096), 8192); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(qcow2.JournalPath(fx.path)); err != nil {
		t.Fatalf("Open with Journal made no journal: %v", err)
	}
	// The journal file is not followed through a symlink, and a missing
	// journal of an image that needs one is a clear error.
	killed := fx.killCopy(t)
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(qcow2.JournalPath(fx.path)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("journal left after a clean close: %v", err)
	}
	os.Remove(qcow2.JournalPath(killed))
	if _, err := qcow2.Open(killed, qcow2.Options{}); !errors.Is(err, qcow2.ErrJournalPending) {
		t.Fatalf("Open without the journal it needs: %v", err)
	}
	if err := os.Symlink(filepath.Join(t.TempDir(), "elsewhere"), qcow2.JournalPath(killed)); err != nil {
		t.Fatal(err)
	}
	if _, err := qcow2.Open(killed, qcow2.Options{}); err == nil {
		t.Fatal("Open followed a symlinked journal")
	}
	// A repair discards a missing journal: the image opens and checks.
	os.Remove(qcow2.JournalPath(killed))
	if _, err := qcow2.Check(killed, qcow2.CheckOptions{Repair: qcow2.RepairAll}); err != nil {
		t.Fatal(err)
	}
	readAll(t, killed, qcow2.Options{})
}

// TestJournalConcurrentWithEviction runs writers, readers, flushes and
// allocation queries at once on an image whose L2 cache is far smaller
// than its pinned slices (512-byte clusters), then checks the live image,
// a kill copy replayed, and the image after Close. Run it under -race.
func TestJournalConcurrentWithEviction(t *testing.T) {
	const cs, size, workers = 512, 8 << 20, 4
	base := make([]byte, size)
	fillRandom(rand.New(rand.NewPCG(9, 9)), base)
	dir, path := overlayOn(t, base, qcow2.CreateOptions{ClusterSize: cs})
	img, err := qcow2.Open(path, qcow2.WithBoot(qcow2.Options{Journal: true, L2CacheBytes: 1}, qcow2.HostBoot()))
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(base)
	part := int64(size / workers)
	errs := make(chan error, workers+1)
	stop := make(chan struct{})
	go func() { // flushes and allocation queries meanwhile
		for {
			select {
			case <-stop:
				errs <- nil
				return
			default:
			}
			if err := img.Flush(); err != nil {
				errs <- err
				return
			}
			if _, err := img.AllocatedRanges(""); err != nil {
				errs <- err
				return
			}
		}
	}()
	done := make(chan error, workers)
	for w := range workers {
		go func() {
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			lo := int64(w) * part
			for range 300 {
				n := 1 + rng.Int64N(3*cs)
				off := lo + rng.Int64N(part-n)
				buf := make([]byte, n)
				fillRandom(rng, buf)
				if _, err := img.WriteAt(buf, off); err != nil {
					done <- err
					return
				}
				copy(want[off:], buf)
				got := make([]byte, part)
				if _, err := img.ReadAt(got, lo); err != nil {
					done <- err
					return
				}
				if i := firstDiff(got, want[lo:lo+part]); i >= 0 {
					done <- fmt.Errorf("worker %d: guest offset %d reads %#x, want %#x", w, lo+int64(i), got[i], want[lo+int64(i)])
					return
				}
			}
			done <- nil
		}()
	}
	for range workers {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	// A last burst with nothing flushed, then a kill copy.
	unflushedThenKill(t, img, dir, want, qcow2.Options{}, 200, func(rng *rand.Rand) (int64, int64) {
		n := 1 + rng.Int64N(3*cs)
		return rng.Int64N(size - n), n
	})
}

// TestJournalVersion2: a version 2 image has no incompatible feature
// field, so its copy-on-write writes sync instead of journaling (the bit
// would land in the header extensions), with or without Journal.
func TestJournalVersion2(t *testing.T) {
	qemuImg := testtools.Need(t, "qemu-img")[0]
	fx := newJournalFixtureBoot(t, 64<<10, qcow2.HostBoot())
	rng := rand.New(rand.NewPCG(11, 12))
	fx.write(t, rng, 4096, 4096)
	if err := fx.img.SetCompat("0.10"); err != nil {
		t.Fatal(err)
	}
	if err := fx.img.Close(); err != nil {
		t.Fatal(err)
	}
	fx.img = fx.open(t, qcow2.HostBoot())
	for range 10 {
		fx.write(t, rng, rng.Int64N(journalDisk-4096)&^4095, 4096)
	}
	killed := fx.killCopy(t)
	if err := fx.img.Close(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{fx.path, killed} {
		if got := readAll(t, p, qcow2.Options{ReadOnly: true}); !bytes.Equal(got, fx.want) {
			t.Fatalf("%s: differs at %d", p, firstDiff(got, fx.want))
		}
		qemuCheckClean(t, qemuImg, p)
	}
}

// TestJournalZeroOverPendingSurvivesKill: zeroing or discarding a cluster
// whose mapping is in the journal only must not leave a record that a
// replay applies over the newer state (the zeroed cluster's old data, or
// a mapping a later write replaced, would come back).
func TestJournalZeroOverPendingSurvivesKill(t *testing.T) {
	const cs = 64 << 10
	fx := newJournalFixtureBoot(t, cs, qcow2.HostBoot())
	rng := rand.New(rand.NewPCG(13, 14))
	fx.write(t, rng, 2*cs+512, 4096) // copy-on-write: journaled
	fx.write(t, rng, 5*cs, 4096)     // copy-on-write: journaled
	fx.write(t, rng, 9*cs, 4096)     // copy-on-write: journaled
	if err := fx.img.WriteZeroes(2*cs, cs, false); err != nil {
		t.Fatal(err)
	}
	clear(fx.want[2*cs : 3*cs])
	if err := fx.img.Discard(5*cs, cs); err != nil {
		t.Fatal(err)
	}
	clear(fx.want[5*cs : 6*cs])
	fx.write(t, rng, 5*cs, cs) // a whole cluster over zeros: mapped directly
	// A discard elsewhere leaves the journal's entries where they are.
	if err := fx.img.Discard(30*cs, 2*cs); err != nil {
		t.Fatal(err)
	}
	clear(fx.want[30*cs : 32*cs])
	killed := fx.killCopy(t)
	fx.img.Close()
	if got := readAll(t, killed, qcow2.Options{}); !bytes.Equal(got, fx.want) {
		i := firstDiff(got, fx.want)
		t.Fatalf("after kill and replay guest offset %d (cluster %d) reads %#x, want %#x", i, i/cs, got[i], fx.want[i])
	}
	qemuCheckClean(t, testtools.Need(t, "qemu-img")[0], killed)
}
