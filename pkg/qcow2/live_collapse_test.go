package qcow2_test

// Live collapse (Live.Collapse): a volume's chain of frozen layers is
// collapsed onto a chosen base while goroutines write and read through
// the same handle; afterwards the top reads the model, names the base,
// checks clean, QEMU reads it byte for byte, and the dropped layers'
// files are untouched.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/qemutest"
	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

const (
	collapseDisk   = 16 << 20
	collapseLayers = 10 // frozen layers between the golden image and the top
)

type collapseCase struct {
	name    string
	create  qcow2.CreateOptions
	journal bool // the top is opened with the write journal for the collapse
	base    int  // the layer collapsed onto: 0 the golden image, k snapshots/s<k>
}

var collapseCases = []collapseCase{
	{name: "plain-c64k", create: qcow2.CreateOptions{ClusterSize: 64 << 10}},
	{name: "plain-c64k-journal", create: qcow2.CreateOptions{ClusterSize: 64 << 10}, journal: true},
	{name: "extl2-c32k", create: qcow2.CreateOptions{ClusterSize: 32 << 10, ExtendedL2: true}},
	{name: "extl2-c16k-journal-onto-s4", create: qcow2.CreateOptions{ClusterSize: 16 << 10, ExtendedL2: true}, journal: true, base: 4},
	{name: "v2-c16k", create: qcow2.CreateOptions{ClusterSize: 16 << 10, Compat: "0.10"}},
	{name: "lazy-c4k-onto-s7", create: qcow2.CreateOptions{ClusterSize: 4 << 10, LazyRefcounts: true}, base: 7},
}

// collapseChain is a volume over a golden image with collapseLayers
// frozen layers between them, each written by its own random writes,
// zeroings and discards over the whole disk (so later layers overwrite
// earlier ones in part), open as a Live handle.
type collapseChain struct {
	*freezeStore
	c     collapseCase
	disk  int64
	live  *qcow2.Live
	model []byte // what the volume reads
	snaps []string
}

func newCollapseChain(t *testing.T, c collapseCase) *collapseChain {
	return newCollapseChainSized(t, c, collapseDisk, collapseLayers)
}

// newCollapseChainSized is newCollapseChain with a disk of disk bytes
// and that many frozen layers.
func newCollapseChainSized(t *testing.T, c collapseCase, disk int64, layers int) *collapseChain {
	t.Helper()
	ch := &collapseChain{freezeStore: newFreezeStore(t, disk, c.create), c: c, disk: disk}
	ch.model = bytes.Clone(ch.initial)
	ch.live = ch.open(t)
	rng := rand.New(rand.NewSource(int64(len(c.name))))
	for i := 1; i <= layers; i++ {
		ch.writeLayer(t, rng)
		snap := ch.path(fmt.Sprintf("snapshots/s%d.qcow2", i))
		if err := ch.live.Freeze(snap); err != nil {
			t.Fatal(err)
		}
		ch.snaps = append(ch.snaps, snap)
	}
	ch.writeLayer(t, rng) // the top's own
	if c.journal {
		// A Freeze's new top has no journal: reopen the volume with one.
		if err := ch.live.Close(); err != nil {
			t.Fatal(err)
		}
		opts := ch.opts
		opts.Journal = true
		l, err := qcow2.OpenLive(ch.vol, opts)
		if err != nil {
			t.Fatal(err)
		}
		ch.live = l
	}
	return ch
}

// writeLayer writes, zeroes and discards random ranges, some of them
// aligned to clusters, others not, through the handle and the model.
func (ch *collapseChain) writeLayer(t *testing.T, rng *rand.Rand) {
	t.Helper()
	cs := ch.live.ClusterSize()
	pick := func(max int64) (int64, int64) {
		n := 1 + rng.Int63n(min(max, ch.disk/4))
		off := rng.Int63n(ch.disk - n)
		if rng.Intn(2) == 0 { // cluster-aligned
			off, n = off/cs*cs, (n+cs-1)/cs*cs
			n = min(n, ch.disk-off)
		}
		return off, n
	}
	for range 10 {
		off, n := pick(256 << 10)
		writeRandom(t, rng, ch.live, ch.model, off, n)
	}
	for i := range 2 {
		off, n := pick(512 << 10)
		if err := ch.live.WriteZeroes(off, n, i == 0); err != nil {
			t.Fatal(err)
		}
		clear(ch.model[off : off+n])
	}
	off, n := pick(256 << 10)
	if err := ch.live.Discard(off, n); err != nil {
		t.Fatal(err)
	}
	if ch.live.Header().Version >= 3 { // version 2 over a backing file: discard does nothing
		clear(ch.model[off : off+n])
	}
}

// basePath is the layer c collapses onto.
func (ch *collapseChain) basePath() string {
	if ch.c.base == 0 {
		return ch.path("images/base.qcow2")
	}
	return ch.snaps[ch.c.base-1]
}

// dropped is what a collapse onto the base drops, top-most first.
func (ch *collapseChain) dropped() []string {
	out := slices.Clone(ch.snaps[ch.c.base:])
	slices.Reverse(out)
	return out
}

func fileHash(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// TestCollapseLive (issue 9, item 7): a chain of 10 frozen layers is
// collapsed onto a base while 4 goroutines write their regions (reading
// each write back at once) and 2 read the rest against the model. The
// writes all land; afterwards the volume reads the model through the
// handle, names the base, the engine's check and qemu-img check are clean,
// qemu-img compare matches the model, and no dropped layer's file
// changed. The volume then takes a Freeze and writes as before.
func TestCollapseLive(t *testing.T) {
	testtools.Need(t, "qemu-img")
	for _, c := range collapseCases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ch := newCollapseChain(t, c)
			hashes := map[string][32]byte{}
			for _, s := range ch.snaps {
				hashes[s] = fileHash(t, s)
			}
			const writers, region = 4, 2 << 20
			lw := newLiveWriters(writers, region, 60)
			var prog []qcow2.CollapseProgress
			dropped := ch.collapseWhileBusy(t, lw, writers*region, &prog)

			if !slices.Equal(dropped, ch.dropped()) {
				t.Fatalf("dropped %q, want %q", dropped, ch.dropped())
			}
			want := lw.final(ch.model)
			if d := qemutest.DiffBytes(want, snapReadAll(t, ch.live, collapseDisk), 0); d != "" {
				t.Fatalf("the volume after the collapse: %s", d)
			}
			wantName, _ := filepath.Rel(filepath.Dir(ch.vol), ch.basePath())
			if got := ch.live.Info().BackingFilename; got != wantName {
				t.Errorf("backing file %q, want %q", got, wantName)
			}
			last := prog[len(prog)-1]
			if last.Done != last.Total || last.Total == 0 || last.Copied == 0 {
				t.Errorf("last progress %+v: want Done == Total > 0 and something copied", last)
			}
			for i := 1; i < len(prog); i++ {
				if prog[i].Done < prog[i-1].Done || prog[i].Copied < prog[i-1].Copied {
					t.Fatalf("progress went back: %+v after %+v", prog[i], prog[i-1])
				}
			}
			// Still a volume: a Freeze and writes work over the new chain.
			rng := rand.New(rand.NewSource(3))
			writeRandom(t, rng, ch.live, want, 3*region/2, 300<<10)
			after := ch.path("snapshots/after.qcow2")
			if err := ch.live.Freeze(after); err != nil {
				t.Fatal(err)
			}
			writeRandom(t, rng, ch.live, want, region/3, 100<<10)
			if err := ch.live.Close(); err != nil {
				t.Fatal(err)
			}
			for s, h := range hashes {
				if fileHash(t, s) != h {
					t.Errorf("%s changed", s)
				}
			}
			for _, p := range []string{ch.vol, after} {
				res, err := qcow2.Check(p, qcow2.CheckOptions{})
				if err != nil || res.Corruptions+res.Leaks+res.CheckErrors != 0 {
					t.Fatalf("check %s: %+v, %v", p, res, err)
				}
				qemutest.MustCheckClean(t, p, "qcow2")
			}
			qemutest.MustCompare(t, ch.vol, "qcow2", writeTemp(t, want), "raw")
		})
	}
}

// collapseWhileBusy collapses ch onto its base while lw's writers write
// their regions below readFrom (each write read back at once) and two
// readers read the rest of the disk, which nobody writes, against the
// model. The copy's first step waits until every writer has written
// since the collapse began, so writes land in the middle of it. It
// returns what the collapse dropped and collects its progress reports.
func (ch *collapseChain) collapseWhileBusy(t *testing.T, lw *liveWriters, readFrom int64, prog *[]qcow2.CollapseProgress) []string {
	t.Helper()
	workers := len(lw.plans)
	started := make(chan struct{}) // the collapse's first progress report
	var sinceStart sync.WaitGroup  // one write per writer after it
	sinceStart.Add(workers)
	done := make(chan struct{}) // the collapse returned
	errs := make(chan error, workers+2)
	var wg sync.WaitGroup
	for g := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			half := len(lw.plans[g]) / 2
			for i, wr := range lw.plans[g] {
				if i == half {
					<-started
				}
				if _, err := ch.live.WriteAt(wr.p, wr.off); err != nil {
					errs <- err
					return
				}
				got := make([]byte, len(wr.p))
				if _, err := ch.live.ReadAt(got, wr.off); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got, wr.p) {
					errs <- fmt.Errorf("writer %d: write %d at %d does not read back (at +%d)", g, i, wr.off, firstDiff(got, wr.p))
					return
				}
				if i == half {
					sinceStart.Done()
				}
				if i%16 == 15 {
					if err := ch.live.Flush(); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	var reads atomic.Int64
	var readersUp sync.WaitGroup
	for r := range 2 {
		wg.Add(1)
		readersUp.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(r)))
			for i := 0; ; i++ {
				n := 1 + rng.Int63n(256<<10)
				off := readFrom + rng.Int63n(collapseDisk-readFrom-n)
				got := make([]byte, n)
				if _, err := ch.live.ReadAt(got, off); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got, ch.model[off:off+n]) {
					errs <- fmt.Errorf("reader %d: [%d, +%d) differs at +%d", r, off, n, firstDiff(got, ch.model[off:off+n]))
					return
				}
				reads.Add(1)
				if i == 0 {
					readersUp.Done()
				}
				select {
				case <-done:
					return
				default:
				}
			}
		}()
	}
	readersUp.Wait()
	first := true
	dropped, err := ch.live.Collapse(context.Background(), qcow2.CollapseOptions{
		Base: ch.basePath(),
		Progress: func(p qcow2.CollapseProgress) {
			*prog = append(*prog, p)
			if first {
				first = false
				close(started)
				sinceStart.Wait()
			}
		},
	})
	close(done)
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if err != nil {
		t.Fatalf("Collapse: %v", err)
	}
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("%d progress reports, last %+v; %d reads", len(*prog), (*prog)[len(*prog)-1], reads.Load())
	return dropped
}

// TestCollapseBadInput: a base that is not in the chain (the top itself,
// a missing or unrelated file), a raw base, a base that is the top's
// backing file already (nothing to do), a top with internal snapshots, a
// closed handle and one that takes no more writes: a clear error (or
// nothing), and the volume's files do not change.
func TestCollapseBadInput(t *testing.T) {
	t.Parallel()
	ch := newCollapseChainSmall(t)
	other := ch.path("images/other.qcow2")
	if err := qcow2.Create(other, qcow2.CreateOptions{Size: collapseDisk}); err != nil {
		t.Fatal(err)
	}
	raw := ch.path("images/raw.img")
	if err := os.WriteFile(raw, make([]byte, collapseDisk), 0o644); err != nil {
		t.Fatal(err)
	}
	before := map[string][32]byte{}
	files := append([]string{ch.vol, ch.path("images/base.qcow2")}, ch.snaps...)
	for _, f := range files {
		before[f] = fileHash(t, f)
	}
	ctx := context.Background()
	for _, c := range []struct {
		base string
		want error
	}{
		{"", qcow2.ErrInvalid},
		{ch.vol, qcow2.ErrNotInChain},
		{other, qcow2.ErrNotInChain},
		{ch.path("images/missing.qcow2"), qcow2.ErrNotInChain},
	} {
		if _, err := ch.live.Collapse(ctx, qcow2.CollapseOptions{Base: c.base}); !errors.Is(err, c.want) {
			t.Errorf("base %q: %v, want %v", c.base, err, c.want)
		}
	}
	if dropped, err := ch.live.Collapse(ctx, qcow2.CollapseOptions{Base: ch.snaps[len(ch.snaps)-1]}); err != nil || dropped != nil {
		t.Errorf("collapse onto the top's own backing file: %q, %v; want nothing to do", dropped, err)
	}
	if err := ch.live.WithImage(func(img *qcow2.Image) error {
		_, err := img.CreateSnapshot("internal")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.live.Collapse(ctx, qcow2.CollapseOptions{Base: ch.snaps[0]}); !errors.Is(err, qcow2.ErrUnsupported) {
		t.Errorf("top with an internal snapshot: %v, want ErrUnsupported", err)
	}
	if err := ch.live.WithImage(func(img *qcow2.Image) error { return img.DeleteSnapshot("internal") }); err != nil {
		t.Fatal(err)
	}
	if err := ch.live.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.live.Collapse(ctx, qcow2.CollapseOptions{Base: ch.snaps[0]}); !errors.Is(err, qcow2.ErrClosed) {
		t.Errorf("closed handle: %v, want ErrClosed", err)
	}
	// A handle that takes no more writes (a failed sync).
	var ff *flakyFile
	wrap := func(p string, f qcow2.File) qcow2.File {
		if p == ch.vol {
			ff = &flakyFile{File: f}
			return ff
		}
		return f
	}
	l, err := qcow2.OpenLive(ch.vol, qcow2.WithFileHooks(ch.opts, wrap, nil))
	if err != nil {
		t.Fatal(err)
	}
	ff.failSync.Store(errnoPtr(syscall.EIO))
	if err := l.Flush(); !errors.Is(err, qcow2.ErrSyncFailed) {
		t.Fatalf("flush with a failing sync: %v", err)
	}
	if _, err := l.Collapse(ctx, qcow2.CollapseOptions{Base: ch.snaps[0]}); !errors.Is(err, qcow2.ErrSyncFailed) {
		t.Errorf("handle after a failed sync: %v, want ErrSyncFailed", err)
	}
	l.Close()
	for f, h := range before {
		if f != ch.vol && fileHash(t, f) != h {
			t.Errorf("%s changed", f)
		}
	}
	if d := qemutest.DiffBytes(ch.model, ch.readImage(t, ch.vol), 0); d != "" {
		t.Errorf("the volume: %s", d)
	}

	// A raw base: a chain over a raw golden image.
	rs := &freezeStore{root: ch.root, vol: ch.path("volumes/r.qcow2"), opts: ch.opts}
	if err := qcow2.Create(rs.vol, qcow2.CreateOptions{BackingFile: "../images/raw.img", BackingFormat: "raw", Backing: ch.opts.Backing}); err != nil {
		t.Fatal(err)
	}
	rl := rs.open(t)
	defer rl.Close()
	if err := rl.Freeze(ch.path("snapshots/r1.qcow2")); err != nil {
		t.Fatal(err)
	}
	if _, err := rl.Collapse(ctx, qcow2.CollapseOptions{Base: raw}); !errors.Is(err, qcow2.ErrUnsupported) {
		t.Errorf("raw base: %v, want ErrUnsupported", err)
	}
	if got := rl.Info().BackingFilename; got != "../snapshots/r1.qcow2" {
		t.Errorf("after a refused collapse the top names %q", got)
	}
}

// newCollapseChainSmall is a plain chain of the usual shape without
// writers: for the tests that do not need the busy run.
func newCollapseChainSmall(t *testing.T) *collapseChain {
	return newCollapseChain(t, collapseCase{name: "small", create: qcow2.CreateOptions{ClusterSize: 64 << 10}})
}

// TestCollapseCancel: a collapse cancelled in the middle of its copy
// returns the context's error and leaves the chain as it was: the top
// names its old backing file and reads the same, every layer is still
// in use. A second collapse then completes.
func TestCollapseCancel(t *testing.T) {
	t.Parallel()
	ch := newCollapseChainSmall(t)
	ctx, cancel := context.WithCancel(context.Background())
	var reports int
	_, err := ch.live.Collapse(ctx, qcow2.CollapseOptions{Base: ch.basePath(), Progress: func(p qcow2.CollapseProgress) {
		reports++
		if p.Copied > 0 {
			cancel()
		}
	}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled collapse: %v, want context.Canceled", err)
	}
	want := ch.snaps[len(ch.snaps)-1]
	wantName, _ := filepath.Rel(filepath.Dir(ch.vol), want)
	if got := ch.live.Info().BackingFilename; got != wantName {
		t.Fatalf("after cancelling, the top names %q, want %q", got, wantName)
	}
	if d := qemutest.DiffBytes(ch.model, snapReadAll(t, ch.live, collapseDisk), 0); d != "" {
		t.Fatalf("after cancelling: %s", d)
	}
	if d := qemutest.DiffBytes(ch.model, ch.readImage(t, ch.vol), 0); d != "" {
		t.Fatalf("after cancelling, the volume's file: %s", d)
	}
	dropped, err := ch.live.Collapse(context.Background(), qcow2.CollapseOptions{Base: ch.basePath()})
	if err != nil || len(dropped) != collapseLayers {
		t.Fatalf("second collapse: %q, %v", dropped, err)
	}
	if err := ch.live.Close(); err != nil {
		t.Fatal(err)
	}
	if d := qemutest.DiffBytes(ch.model, ch.readImage(t, ch.vol), 0); d != "" {
		t.Fatalf("after the second collapse: %s", d)
	}
	t.Logf("cancelled after %d progress reports", reports)
}

// TestCollapseGuestWritesWin: between the choice of what a window needs
// and its copy, the guest writes 512 bytes into every cluster of the
// window (through the top, as a request served meanwhile would). Each of
// those clusters was undefined in the top when the window was planned;
// the copy must check again under the lock and never overwrite a guest
// write with older data: afterwards the volume reads every guest write.
// Without that check the zero clusters and subclusters the copy makes
// replace guest writes (version 3, plain and extended L2); a copied data
// cluster is read under the same lock hold as it is written, so there
// the check saves the work, not the data.
func TestCollapseGuestWritesWin(t *testing.T) {
	for _, c := range []collapseCase{collapseCases[0], collapseCases[3], collapseCases[4]} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ch := newCollapseChain(t, c)
			cs := ch.live.ClusterSize()
			writes, seen := 0, map[int64]bool{}
			qcow2.SetCollapseHook(ch.live, func(top *qcow2.Image, off, n int64) {
				if seen[off] {
					return // the switch's last pass: the guest is held back there
				}
				seen[off] = true
				for vi := off / cs; vi*cs < off+n; vi++ {
					at := vi*cs + (vi*7)%(cs/512)*512
					p := bytes.Repeat([]byte{byte(vi) | 1}, 512)
					if _, err := top.WriteAt(p, at); err != nil {
						t.Error(err)
						return
					}
					copy(ch.model[at:], p)
					writes++
				}
			})
			var last qcow2.CollapseProgress
			if _, err := ch.live.Collapse(context.Background(), qcow2.CollapseOptions{
				Base:     ch.basePath(),
				Progress: func(p qcow2.CollapseProgress) { last = p },
			}); err != nil {
				t.Fatal(err)
			}
			if d := qemutest.DiffBytes(ch.model, snapReadAll(t, ch.live, collapseDisk), 0); d != "" {
				t.Fatalf("the volume after the collapse: %s", d)
			}
			if err := ch.live.Close(); err != nil {
				t.Fatal(err)
			}
			if d := qemutest.DiffBytes(ch.model, ch.readImage(t, ch.vol), 0); d != "" {
				t.Fatalf("the volume's file after the collapse: %s", d)
			}
			res, err := qcow2.Check(ch.vol, qcow2.CheckOptions{})
			if err != nil || res.Corruptions+res.Leaks+res.CheckErrors != 0 {
				t.Fatalf("check: %+v, %v", res, err)
			}
			t.Logf("%d guest writes inside planned windows; %+v", writes, last)
		})
	}
}

// TestCollapseCloseAndFreezeMeanwhile: a Freeze asked for during a
// collapse waits for it and then freezes the collapsed top; a Close
// during a collapse ends it with ErrClosed and leaves the chain as it
// was.
func TestCollapseCloseAndFreezeMeanwhile(t *testing.T) {
	t.Parallel()
	t.Run("freeze", func(t *testing.T) {
		t.Parallel()
		ch := newCollapseChainSmall(t)
		snap := ch.path("snapshots/during.qcow2")
		freezeErr := make(chan error, 1)
		asked, after := false, 0
		_, err := ch.live.Collapse(context.Background(), qcow2.CollapseOptions{Base: ch.basePath(), Progress: func(p qcow2.CollapseProgress) {
			switch {
			case !asked && p.Copied > 0:
				asked = true
				go func() { freezeErr <- ch.live.Freeze(snap) }()
			case asked:
				// The collapse runs: the Freeze must still wait.
				after++
				if _, err := os.Stat(snap); err == nil {
					t.Error("a Freeze completed in the middle of a collapse")
				}
			}
		}})
		if err != nil {
			t.Fatal(err)
		}
		if after == 0 {
			t.Fatal("no progress report after the Freeze was asked for")
		}
		if err := testtools.Within(t, "the Freeze", freezeErr); err != nil {
			t.Fatal(err)
		}
		if got := ch.live.Info().BackingFilename; got != "../snapshots/during.qcow2" {
			t.Errorf("after the Freeze the top names %q", got)
		}
		if got := backingName(t, snap); got != "../images/base.qcow2" {
			t.Errorf("the frozen layer names %q, want the collapse's base", got)
		}
		if err := ch.live.Close(); err != nil {
			t.Fatal(err)
		}
		if d := qemutest.DiffBytes(ch.model, ch.readImage(t, ch.vol), 0); d != "" {
			t.Fatalf("the volume: %s", d)
		}
	})
	t.Run("close", func(t *testing.T) {
		t.Parallel()
		ch := newCollapseChainSmall(t)
		_, err := ch.live.Collapse(context.Background(), qcow2.CollapseOptions{Base: ch.basePath(), Progress: func(p qcow2.CollapseProgress) {
			if p.Copied > 0 {
				ch.live.Close()
			}
		}})
		if !errors.Is(err, qcow2.ErrClosed) {
			t.Fatalf("collapse of a handle closed meanwhile: %v, want ErrClosed", err)
		}
		want, _ := filepath.Rel(filepath.Dir(ch.vol), ch.snaps[len(ch.snaps)-1])
		if got := backingName(t, ch.vol); got != want {
			t.Errorf("the volume names %q, want %q", got, want)
		}
		if d := qemutest.DiffBytes(ch.model, ch.readImage(t, ch.vol), 0); d != "" {
			t.Fatalf("the volume: %s", d)
		}
	})
}
