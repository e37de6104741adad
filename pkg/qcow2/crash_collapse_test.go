package qcow2_test

// Crash states of a live collapse (Live.Collapse). The top is recorded
// (internal/crashsim; with its write journal on the same clock) from its
// open through a collapse onto the golden image, during which the guest
// writes a block after every progress report and flushes after every
// third, to the clean close. The frozen layers and the base are never
// written. Every crash state of the top must:
//
//	(a) open writable (a dirty image rebuilds its refcounts; the journal
//	    is replayed on a kill, discarded after a power failure) and name
//	    the old backing file or the new base;
//	(b) check clean, leaks allowed (none after the clean close);
//	(c) read, through whichever chain it names, in every 512-byte sector,
//	    what the volume read before the collapse or the guest's write
//	    there: never the base's data where a dropped layer decided, which
//	    is what a header switch that reached the disk before the copy
//	    would show;
//	(d) read the guest's write where it returned before a kill, or before
//	    a Flush whose sync persisted.
//
// Knobs: QCOW2_CRASH_SEED and QCOW2_CRASH_STATES (default 40 per
// configuration) as for TestCrashStates.

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/csi-qcow2/csi-qcow2/internal/crashsim"
	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

const (
	crashCollapseDisk   = 2 << 20
	crashCollapseLayers = 4
	crashCollapseBlock  = 4096
)

func crashCollapseCases() []collapseCase {
	return []collapseCase{
		{name: "v3-c4k", create: qcow2.CreateOptions{ClusterSize: 4 << 10}},
		{name: "extl2-c16k", create: qcow2.CreateOptions{ClusterSize: 16 << 10, ExtendedL2: true}},
		{name: "v3-c64k-journal", create: qcow2.CreateOptions{ClusterSize: 64 << 10}, journal: true},
		{name: "extl2-c32k-journal", create: qcow2.CreateOptions{ClusterSize: 32 << 10, ExtendedL2: true}, journal: true},
	}
}

// collapseGuestWrite is a block the guest wrote during the recorded
// collapse: returned is the clock value when WriteAt returned, flushed
// the index in the top's stream of the last sync of the first Flush that
// began after that (-1: none did).
type collapseGuestWrite struct {
	off      int64
	p        []byte
	returned int64
	flushed  int
}

// collapseCrashRun is one recorded collapse.
type collapseCrashRun struct {
	ch               *collapseChain
	recs             []*crashsim.Recording // the top, and its journal if any
	before           []byte                // what the volume read before the collapse
	writes           []collapseGuestWrite
	oldName, newName string
	switchAt         int64 // the clock when the copy ended, before the switch
}

func TestCrashStatesCollapse(t *testing.T) {
	qemuImg := testtools.Need(t, "qemu-img")[0]
	seed := envUint(t, "QCOW2_CRASH_SEED", uint64(time.Now().UnixNano()))
	perConfig := int(envUint(t, "QCOW2_CRASH_STATES", 40))
	t.Logf("seed %d (set QCOW2_CRASH_SEED=%d to repeat this run)", seed, seed)
	for i, c := range crashCollapseCases() {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			run := recordCollapse(t, c, nil)
			states := crashsim.GroupStates(run.recs, crashsim.Plan{Seed: seed ^ uint64(i)<<40, ReorderedPerEpoch: 6, Prefixes: 12})
			// Half of the states from the switch on (its last pass, Flush,
			// header rewrite, and the close), half from the copy.
			k := slices.IndexFunc(states, func(s crashsim.GroupState) bool { return s.Crash >= run.switchAt })
			copying := pickGroupStates(slices.Clone(states[:k]), perConfig/2, seed+uint64(i))
			states = append(copying, pickGroupStates(states[k:], perConfig-len(copying), seed+uint64(i))...)
			var failed, switched atomic.Int64
			work := make(chan crashsim.GroupState)
			var wg sync.WaitGroup
			for range runtime.GOMAXPROCS(0) {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for s := range work {
						last := s.Index == states[len(states)-1].Index
						name, err := run.check(s, qemuImg, last || s.Index%8 == 0)
						if err != nil && failed.Add(1) <= 3 {
							t.Errorf("%v\nreproduce: QCOW2_CRASH_SEED=%d QCOW2_CRASH_STATES=%d go test -run 'TestCrashStatesCollapse/%s' ./pkg/qcow2/", err, seed, perConfig, c.name)
						}
						if name == run.newName {
							switched.Add(1)
						}
					}
				}()
			}
			for _, s := range states {
				work <- s
			}
			close(work)
			wg.Wait()
			if switched.Load() == 0 {
				t.Errorf("no crash state names the new base")
			}
			t.Logf("%d crash states (%d of them switched), %d failed; %d guest writes during the collapse", len(states), switched.Load(), failed.Load(), len(run.writes))
		})
	}
}

// TestCrashCollapseHarnessCatchesEarlySwitch: with the top's syncs
// hidden, the header switch may persist while the copy has not; check
// (c) must catch a state that reads the base where a dropped layer
// decided.
func TestCrashCollapseHarnessCatchesEarlySwitch(t *testing.T) {
	qemuImg := testtools.Need(t, "qemu-img")[0]
	run := recordCollapse(t, crashCollapseCases()[0], func(r *crashsim.Recorder) qcow2.File { return noSyncFile{r} })
	states := crashsim.GroupStates(run.recs, crashsim.Plan{Seed: 1, ReorderedPerEpoch: 200, NoBoundaries: true})
	caught := 0
	for _, s := range states {
		if _, err := run.check(s, qemuImg, false); err != nil && strings.Contains(err.Error(), "(c)") {
			caught++
		}
	}
	if caught == 0 {
		t.Fatalf("none of %d states read the base where a dropped layer decided, although the top was never synced: check (c) cannot fail", len(states))
	}
	t.Logf("%d of %d states caught", caught, len(states))
}

// recordCollapse builds a chain of crashCollapseLayers frozen layers,
// then records the top from its open through a collapse onto the golden
// image and a clean close. wrap, if set, stands between the top and its
// Recorder.
func recordCollapse(t *testing.T, c collapseCase, wrap func(*crashsim.Recorder) qcow2.File) *collapseCrashRun {
	t.Helper()
	c.journal = c.journal && wrap == nil
	ch := newCollapseChainSized(t, collapseCase{name: c.name, create: c.create}, crashCollapseDisk, crashCollapseLayers)
	if err := ch.live.Close(); err != nil {
		t.Fatal(err)
	}
	run := &collapseCrashRun{ch: ch, before: ch.model}
	run.oldName, _ = filepath.Rel(filepath.Dir(ch.vol), ch.snaps[len(ch.snaps)-1])
	run.newName, _ = filepath.Rel(filepath.Dir(ch.vol), ch.basePath())
	data, err := os.ReadFile(ch.vol)
	if err != nil {
		t.Fatal(err)
	}
	clock := &crashsim.Clock{}
	rec := crashsim.NewRecorderOn(clock, data)
	var f qcow2.File = rec
	if wrap != nil {
		f = wrap(rec)
	}
	opts := ch.opts
	var jrec *crashsim.Recorder
	if c.journal {
		jrec = crashsim.NewRecorderOn(clock, nil)
		opts = qcow2.WithJournal(opts, jrec, bootA)
	}
	img, err := qcow2.OpenFile(f, ch.vol, opts)
	if err != nil {
		t.Fatal(err)
	}
	live := qcow2.LiveOn(img)
	qcow2.SetCollapseBatch(live, 1) // a step per data cluster, and guest writes between them
	blocks := int64(crashCollapseDisk / crashCollapseBlock)
	reports := 0
	var pendingFlush []int // writes no Flush has begun after yet
	_, err = live.Collapse(context.Background(), qcow2.CollapseOptions{Base: ch.basePath(), Progress: func(qcow2.CollapseProgress) {
		reports++
		defer func() { run.switchAt = clock.Now() }()
		b := int64(reports*37) % blocks
		w := collapseGuestWrite{off: b * crashCollapseBlock, p: bytes.Repeat([]byte{byte(reports) | 0x80}, crashCollapseBlock), flushed: -1}
		for _, o := range run.writes {
			if o.off == w.off {
				return // one write per block: its sectors read old or new
			}
		}
		if _, err := live.WriteAt(w.p, w.off); err != nil {
			t.Error(err)
			return
		}
		w.returned = clock.Now()
		run.writes = append(run.writes, w)
		pendingFlush = append(pendingFlush, len(run.writes)-1)
		if reports%3 == 0 {
			if err := live.Flush(); err != nil {
				t.Error(err)
				return
			}
			for _, i := range pendingFlush {
				run.writes[i].flushed = lastSyncBefore(rec, rec.Len())
			}
			pendingFlush = nil
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := live.Close(); err != nil {
		t.Fatal(err)
	}
	run.recs = []*crashsim.Recording{rec.Recording()}
	if jrec != nil {
		run.recs = append(run.recs, jrec.Recording())
	}
	if len(run.writes) == 0 {
		t.Fatal("the collapse made no progress report: no guest write during it")
	}
	return run
}

// lastSyncBefore returns the index of the last Sync among r's first n
// operations (-1: none).
func lastSyncBefore(r *crashsim.Recorder, n int) int {
	last := -1
	for _, k := range r.Recording().Syncs() {
		if k < n {
			last = k
		}
	}
	return last
}

// check materializes state s beside the layers, opens it as a kill
// (every other Prefix state: the same boot) or a power failure (another
// boot), and checks (a) to (d). It returns the backing file name the state
// has.
func (run *collapseCrashRun) check(s crashsim.GroupState, qemuImg string, withQemu bool) (string, error) {
	path := filepath.Join(filepath.Dir(run.ch.vol), fmt.Sprintf("crash-%d.qcow2", s.Index))
	defer os.Remove(path)
	defer os.Remove(qcow2.JournalPath(path))
	if err := os.WriteFile(path, run.recs[0].Materialize(s.Files[0]), 0o644); err != nil {
		return "", err
	}
	if len(run.recs) > 1 {
		if err := os.WriteFile(qcow2.JournalPath(path), run.recs[1].Materialize(s.Files[1]), 0o600); err != nil {
			return "", err
		}
	}
	kill := s.Kind == crashsim.Prefix && s.Index%2 == 0
	boot := bootB
	if kill {
		boot = bootA
	}
	what := fmt.Sprintf("%v as a %s", s, map[bool]string{true: "kill", false: "power failure"}[kill])
	img, err := qcow2.Open(path, qcow2.WithBoot(run.ch.opts, boot))
	if err != nil {
		return "", fmt.Errorf("%s: (a) writable Open failed: %w", what, err)
	}
	name := img.Header().BackingFile
	got := make([]byte, img.Size())
	_, rerr := img.ReadAt(got, 0)
	if err := img.Close(); err != nil {
		return name, fmt.Errorf("%s: (a) Close failed: %w", what, err)
	}
	if rerr != nil {
		return name, fmt.Errorf("%s: (a) reading: %w", what, rerr)
	}
	if name != run.oldName && name != run.newName {
		return name, fmt.Errorf("%s: (a) backing file %q is neither %q nor %q", what, name, run.oldName, run.newName)
	}
	final := s.Files[0].Durable == len(run.recs[0].Ops())
	if err := checkImage(path, qemuImg, withQemu, final, false); err != nil {
		return name, fmt.Errorf("%s: (b) %w", what, err)
	}
	const sector = 512
	written := bytes.Clone(run.before) // with each block's one guest write
	durable := make([]bool, len(got)/sector)
	for _, w := range run.writes {
		copy(written[w.off:], w.p)
		if kill && w.returned <= s.Crash || w.flushed >= 0 && s.Files[0].Durable > w.flushed || final {
			for k := range int64(len(w.p)) / sector {
				durable[w.off/sector+k] = true
			}
		}
	}
	for off := 0; off < len(got); off += sector {
		g := got[off : off+sector]
		isNew := bytes.Equal(g, written[off:off+sector])
		if !isNew && !bytes.Equal(g, run.before[off:off+sector]) {
			return name, fmt.Errorf("%s: (c) backing file %q: sector at %d reads neither the volume's content nor a guest write", what, name, off)
		}
		if durable[off/sector] && !isNew {
			return name, fmt.Errorf("%s: (d) backing file %q: sector at %d lost a guest write that was acknowledged", what, name, off)
		}
	}
	return name, nil
}
