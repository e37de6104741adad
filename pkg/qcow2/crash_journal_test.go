package qcow2_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/csi-qcow2/csi-qcow2/internal/crashsim"
	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// Crash states of images written through the write journal (journal.go).
// The image and its journal are recorded on one clock; a crash state is a
// state of both files:
//
//   - a kill (Prefix state, every issued operation persisted) on the same
//     boot: the journal is replayed, and every guest operation that
//     returned before the kill must read back (rule 1);
//   - a power failure (Boundary, Reordered, and every other Prefix state,
//     opened as another boot): the journal is discarded, and every guest
//     operation that returned before a Flush (or Close) whose syncs
//     persisted must read back (rule 2);
//
// and in both, rule 3 as in crash_test.go: the image opens, checks clean
// (leaks allowed), and every byte reads as its durable value or as a
// later operation left it, never as something never written there.

func journalCrashConfigs() []crashConfig {
	return []crashConfig{
		{name: "journal-v3-c64k-raw", compat: "1.1", clusterSize: 65536, backing: "raw", size: 2 << 20, journal: true},
		{name: "journal-v3-c4k-qcow2", compat: "1.1", clusterSize: 4096, backing: "qcow2", size: 1 << 20, journal: true},
		{name: "journal-v3lazy-c64k-qcow2", compat: "1.1", lazy: true, clusterSize: 65536, backing: "qcow2", size: 2 << 20, journal: true},
		{name: "journal-v3-c512-raw", compat: "1.1", clusterSize: 512, backing: "raw", size: 192 << 10, journal: true},
		{name: "journal-v3-c16k-extl2-raw", compat: "1.1", clusterSize: 16384, backing: "raw", size: 1 << 20, extendedL2: true, journal: true},
		{name: "journal-v3-c64k-raw-concurrent", compat: "1.1", clusterSize: 65536, backing: "raw", size: 2 << 20, concurrent: true, journal: true},
	}
}

func TestCrashStatesJournal(t *testing.T) {
	runCrashTest(t, "TestCrashStatesJournal", journalCrashConfigs(), 300)
}

// TestCrashJournalRebootRule records copy-on-write writes into an overlay
// through the journal, with no Flush, and opens power-failure states of
// them: as another boot (what the engine does after a reboot) every byte
// must read as old or new; replaying the journal as if the host had not
// rebooted must be caught reading bytes that are neither (zeros of a
// cluster whose copied data never reached the disk). So the states do
// exercise the rule, and the check of it can fail.
func TestCrashJournalRebootRule(t *testing.T) {
	const cs, size = 4096, 256 << 10
	base := make([]byte, size)
	for b := range base {
		base[b] = tag(0, int64(b))
	}
	o := recordOverlay(t, base, qcow2.CreateOptions{ClusterSize: cs})
	img := o.img
	want := slices.Clone(base)
	for seq := 1; seq <= 40; seq++ {
		off := int64(seq*5%(size/cs))*cs + 512
		buf := make([]byte, 512)
		for i := range buf {
			buf[i] = tag(seq, off+int64(i))
		}
		if _, err := img.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
		copy(want[off:], buf)
	}
	// Killed here: no Close.
	recs := o.recordings()
	states := crashsim.GroupStates(recs, crashsim.Plan{Seed: 11, ReorderedPerEpoch: 40, NoBoundaries: true})
	bad := map[[16]byte]int{}
	tried := 0
	for _, s := range states {
		if s.Kind != crashsim.Reordered {
			continue
		}
		tried++
		for _, boot := range [][16]byte{bootA, bootB} {
			path := o.materialize(t, recs, s, fmt.Sprintf("state-%x.qcow2", boot[0]))
			got, err := readGuestOpts(path, qcow2.WithBoot(qcow2.Options{}, boot))
			if err != nil {
				if boot == bootB {
					t.Fatalf("%v as another boot: %v", s, err)
				}
				bad[boot]++
				continue
			}
			for b := range got {
				if got[b] != base[b] && got[b] != want[b] {
					bad[boot]++
					break
				}
			}
		}
	}
	if bad[bootB] != 0 {
		t.Fatalf("%d of %d power-failure states opened as another boot read bytes neither old nor new", bad[bootB], tried)
	}
	if bad[bootA] == 0 {
		t.Fatalf("replaying the journal after a power failure passed all %d states: the check cannot fail", tried)
	}
	t.Logf("%d states; replaying after a power failure broke %d of them, discarding broke none", tried, bad[bootA])
}

// checkJournalStates checks a journal configuration's group states.
// It returns how many states it checked, and how many of them also
// through qemu-img check.
func (r *crashRun) checkJournalStates(t *testing.T, testName string, seed uint64, i, perConfig, qemuEvery int) (checked, withQemu int64) {
	recs := []*crashsim.Recording{r.rec, r.jrec}
	states := crashsim.GroupStates(recs, crashsim.Plan{
		Seed:              seed ^ uint64(i)<<40,
		ReorderedPerEpoch: max(8, perConfig/8),
		Prefixes:          max(12, perConfig/4),
	})
	states = pickGroupStates(states, perConfig, seed+uint64(i))
	var failed, qemuChecked atomic.Int64
	work := make(chan crashsim.GroupState)
	var wg sync.WaitGroup
	for range 2 * runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for s := range work {
				boot := bootB // a power failure: another boot
				if s.Kind == crashsim.Prefix && s.Index%2 == 0 {
					boot = bootA // a kill
				}
				last := s.Index == states[len(states)-1].Index
				err := r.checkJournalState(s, "", false, boot)
				if err == nil && (last || s.Index%qemuEvery == 0) {
					qemuChecked.Add(1)
					err = r.checkJournalState(s, testtools.Need(t, "qemu-img")[0], true, boot)
				}
				if err != nil && failed.Add(1) <= 3 {
					t.Errorf("%v\nreproduce: QCOW2_CRASH_SEED=%d QCOW2_CRASH_STATES=%d QCOW2_CRASH_CONFIG=%s go test -run %s ./pkg/qcow2/",
						err, seed, perConfig, r.cfg.name, testName)
				}
			}
		}()
	}
	start := time.Now()
	for _, s := range states {
		work <- s
	}
	close(work)
	wg.Wait()
	t.Logf("%d group states in %v, %d failed", len(states), time.Since(start).Round(time.Millisecond), failed.Load())
	if n := failed.Load(); n > 0 {
		t.Errorf("%s: %d of %d crash states failed (seed %d)", r.cfg.name, n, len(states), seed)
	}
	return int64(len(states)), qemuChecked.Load()
}

// checkJournalState materializes both files of s, opens the image as the
// given boot, and checks it.
func (r *crashRun) checkJournalState(s crashsim.GroupState, qemuImg string, withQemu bool, boot [16]byte) error {
	// Beside the backing file, which the image names relative to itself.
	path := filepath.Join(r.dir, fmt.Sprintf("crash-j%d-%x.qcow2", s.Index, boot[0]))
	defer os.Remove(path)
	defer os.Remove(qcow2.JournalPath(path))
	img0, img1 := r.rec.Materialize(s.Files[0]), r.jrec.Materialize(s.Files[1])
	if err := os.WriteFile(path, img0, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(qcow2.JournalPath(path), img1, 0o600); err != nil {
		return err
	}
	what := fmt.Sprintf("%v as boot %x", s, boot[:3])

	// The content model: a kill keeps every operation that returned; a
	// power failure, those a completed Flush covered.
	cs := crashsim.State{Index: s.Index, Kind: s.Kind, Crash: int(s.Crash), Durable: int(s.Crash)}
	if boot != bootA || s.Kind != crashsim.Prefix {
		cs.Durable = r.flushedBefore(s.Files[0])
	}

	img, err := qcow2.Open(path, qcow2.WithBoot(qcow2.Options{}, boot))
	if err != nil {
		return fmt.Errorf("%s: (a) writable Open failed: %w", what, err)
	}
	got := make([]byte, img.Size())
	_, readErr := img.ReadAt(got, 0)
	if err := img.Close(); err != nil {
		return fmt.Errorf("%s: (a) Close failed: %w", what, err)
	}
	if readErr != nil {
		return fmt.Errorf("%s: reading the guest content: %w", what, readErr)
	}
	final := s.Files[0].Durable == len(r.rec.Ops())
	if err := checkImage(path, qemuImg, withQemu, final, false); err != nil {
		return fmt.Errorf("%s: (b) %w", what, err)
	}
	if final && !bytes.Equal(got, r.liveRead) {
		return fmt.Errorf("%s: the final (clean close) state differs from what the live image read", what)
	}
	if err := r.checkContent(cs, got); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}

	// Still usable, journal and all.
	rng := rand.New(rand.NewPCG(uint64(s.Index), 5))
	if err := r.writeAfterRecovery(path, got, qcow2.WithBoot(qcow2.Options{Journal: true}, boot), rng, qemuImg, withQemu); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// flushedBefore returns the clock value before which every guest
// operation that returned is covered by a Flush (or Close) whose syncs of
// the image persisted in f, a state of the image file.
func (r *crashRun) flushedBefore(f crashsim.State) int {
	ops := r.rec.Ops()
	if f.Durable == 0 {
		return 0
	}
	lastDurable := ops[f.Durable-1].Seq
	best := 0
	for _, g := range r.ops {
		if g.kind != gFlush && g.kind != gReopen {
			continue
		}
		// The operation's last sync of the image.
		var last int64 = -1
		for _, k := range r.rec.Syncs() {
			if seq := ops[k].Seq; seq >= int64(g.start) && seq < int64(g.end) {
				last = seq
			}
		}
		if last >= 0 && last <= lastDurable {
			best = max(best, g.start)
		}
	}
	return best
}
