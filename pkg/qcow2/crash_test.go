package qcow2_test

// Crash-state simulation (DESIGN.md, test layer 4): run a guest workload on
// an image whose file records every write/truncate/punch/sync, rebuild the
// states a power failure or a process kill could leave (internal/crashsim),
// and check rule 3 of "Rules the engine keeps" on each:
//
//	(a) the image opens writable (rebuilding refcounts when dirty) and closes;
//	(b) no corruption, leaks allowed: qcow2.Check on every state (without
//	    lazy refcounts also on the state as found, before any open), and
//	    qemu-img check on a sample;
//	(c) every guest byte reads as its value at the last durable point or as
//	    a value a later, possibly-persisted guest operation left there;
//	(d) no read returns bytes the guest never wrote at that offset;
//	(e) after recovery, new writes allocate without clobbering anything
//	    (every other state) and the image still checks clean.
//
// A final state (the whole stream, i.e. a clean Close) must check with no
// leaks and read exactly what the live image read.
// TestCrashHarnessCatchesMissingBarriers shows the checks can fail.
// TestCrashStatesSnapshotsAndCompression (crash_snapshot_test.go) runs the
// same checks, plus snapshot ones, on workloads with snapshot operations and
// compressed writes.
//
// "Durable point": ops[:Durable] of the state persisted, so every guest
// operation that returned before file op Durable was issued is durable —
// rule 1 (nothing acknowledged lives only in memory) plus the file Sync.
// That covers, in particular, everything a completed Flush covered.
//
// Reproduce a failure with the line the test prints, e.g.
//
//	QCOW2_CRASH_SEED=123 QCOW2_CRASH_STATES=80 QCOW2_CRASH_CONFIG=v3-c4k-raw-r64 QCOW2_CRASH_STATE=57 go test -run TestCrashStates ./pkg/qcow2/
//
// Knobs: QCOW2_CRASH_STATES=n states per configuration (default 80, and
// there are 29 configurations); QCOW2_CRASH_QEMU_EVERY=k runs qemu-img
// check on every k-th state (default 8, and always on the final state;
// qcow2.Check runs on every state); QCOW2_CRASH_KEEP=dir copies failing
// crash states (and the backing file) there; QCOW2_CRASH_TMP=dir holds
// the states while they are checked (default: /dev/shm when present);
// QCOW2_CRASH_OPS=n guest operations per workload (default 30-49).

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/csi-qcow2/csi-qcow2/internal/crashsim"
	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// The Recorder must be usable as the engine's File.
var _ qcow2.File = (*crashsim.Recorder)(nil)

type crashConfig struct {
	name string
	// concurrent: guest operations come from several goroutines at once
	// (no Resize or reopen), each on its own part of the disk.
	concurrent   bool
	compat       string // "1.1" or "0.10"
	lazy         bool
	refcountBits int // 0: the default (16)
	clusterSize  int64
	backing      string // "", "raw" or "qcow2"
	size         int64
	// snapshots: the workload of crash_snapshot_test.go (snapshot
	// operations and compressed writes besides guest I/O; no Resize).
	snapshots bool
	// extendedL2: 128-bit L2 entries with subclusters (16 KiB clusters
	// and up).
	extendedL2 bool
	// journal: the image is opened with a write journal, recorded as a
	// second file on one clock (crash_journal_test.go).
	journal bool
}

func crashConfigs() []crashConfig {
	var out []crashConfig
	for _, v := range []struct {
		compat string
		lazy   bool
		tag    string
	}{{"1.1", false, "v3"}, {"1.1", true, "v3lazy"}, {"0.10", false, "v2"}} {
		for _, cs := range []int64{512, 4096, 65536} {
			for _, b := range []string{"", "raw", "qcow2"} {
				// Guest sizes keep every configuration's tables busy:
				// several L2 tables and refcount blocks at 512 B clusters.
				size := map[int64]int64{512: 192 << 10, 4096: 1 << 20, 65536: 2 << 20}[cs]
				name := fmt.Sprintf("%s-c%s", v.tag, sizeTag(cs))
				if b != "" {
					name += "-" + b
				}
				// Other refcount widths move the refcount table
				// growth points (version 3 only).
				rb := 0
				if v.compat == "1.1" && b != "" {
					rb = map[string]int{"v3raw": 64, "v3qcow2": 1, "v3lazyraw": 4, "v3lazyqcow2": 8}[v.tag+b]
					name += fmt.Sprintf("-r%d", rb)
				}
				out = append(out, crashConfig{name: name, compat: v.compat, lazy: v.lazy, refcountBits: rb,
					clusterSize: cs, backing: b, size: size})
			}
		}
	}
	out = append(out,
		crashConfig{name: "v3-c4k-concurrent", compat: "1.1", clusterSize: 4096, size: 1 << 20, concurrent: true},
		crashConfig{name: "v3lazy-c64k-raw-concurrent", compat: "1.1", lazy: true, clusterSize: 65536, backing: "raw", size: 2 << 20, concurrent: true},
		// Extended L2 entries: 512 B subclusters at 16K clusters, 2 KiB
		// at 64K, so guest ops of every shape hit partial subclusters.
		crashConfig{name: "v3-c16k-extl2-raw", compat: "1.1", clusterSize: 16384, backing: "raw", size: 1 << 20, extendedL2: true},
		crashConfig{name: "v3lazy-c64k-extl2-qcow2", compat: "1.1", lazy: true, clusterSize: 65536, backing: "qcow2", size: 2 << 20, extendedL2: true},
		crashConfig{name: "v3-c64k-extl2-raw-concurrent", compat: "1.1", clusterSize: 65536, backing: "raw", size: 2 << 20, concurrent: true, extendedL2: true},
	)
	return out
}

// concurrentWorkload runs nops guest operations from 3 goroutines, each
// confined to its own cluster-aligned third of the disk, so that the
// guest content does not depend on how they interleave. A byte's durable
// value is still well defined: the operations of one goroutine that
// returned before the durable point are a prefix of its operations.
func concurrentWorkload(t *testing.T, img *qcow2.Image, mark func() int, rng *rand.Rand, size, cs int64, nops int) []guestOp {
	const workers = 3
	part := size / workers / cs * cs
	var (
		mu      sync.Mutex
		ops     []guestOp
		nextSeq atomic.Int64
		wg      sync.WaitGroup
	)
	seeds := make([]uint64, workers)
	for i := range seeds {
		seeds[i] = rng.Uint64()
	}
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seeds[w], 3))
			base := int64(w) * part
			for range nops / workers {
				g := guestOp{}
				var opErr error
				// The sequence number is taken before the operation
				// starts, so one goroutine's numbers follow its order.
				mu.Lock()
				g.seq = int(nextSeq.Add(1))
				g.start = mark()
				mu.Unlock()
				switch p := rng.IntN(100); {
				case p < 60:
					g.kind = gWrite
					g.n = 1 + rng.Int64N(min(3*cs, part/2))
					g.off = base + rng.Int64N(part-g.n)
					buf := make([]byte, g.n)
					for i := range buf {
						buf[i] = tag(g.seq, g.off+int64(i))
					}
					_, opErr = img.WriteAt(buf, g.off)
				case p < 72:
					g.kind = gZero
					g.off, g.n = randRange(rng, part, cs)
					g.off += base
					g.unmap = rng.IntN(2) == 0
					opErr = img.WriteZeroes(g.off, g.n, g.unmap)
				case p < 84:
					g.kind = gDiscard
					g.off, g.n = randRange(rng, part, cs)
					g.off += base
					opErr = img.Discard(g.off, g.n)
				default:
					g.kind = gFlush
					opErr = img.Flush()
				}
				g.end = mark()
				if opErr != nil {
					t.Errorf("guest op %v: %v", g, opErr)
					return
				}
				mu.Lock()
				ops = append(ops, g)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	slices.SortFunc(ops, func(a, b guestOp) int { return a.seq - b.seq })
	return ops
}

func sizeTag(n int64) string {
	if n >= 1024 {
		return fmt.Sprintf("%dk", n/1024)
	}
	return strconv.FormatInt(n, 10)
}

// tag is the byte a guest write with sequence number seq leaves at guest
// offset off: never zero, and different writes (and offsets) mostly differ,
// so a byte that comes back from the wrong write or the wrong place shows.
// seq 0 is the backing file's content.
func tag(seq int, off int64) byte {
	x := uint64(seq)*0x9e3779b97f4a7c15 ^ uint64(off)*0xbf58476d1ce4e5b9
	x ^= x >> 31
	x *= 0x94d049bb133111eb
	x ^= x >> 29
	return byte(x%255) + 1
}

type guestKind int

const (
	gWrite guestKind = iota
	gZero
	gDiscard
	gFlush
	gResize
	gReopen // Close, then OpenFile on the same file
	// crash_snapshot_test.go:
	gSnapCreate // CreateSnapshot(name)
	gSnapDelete // DeleteSnapshot(name)
	gSnapApply  // ApplySnapshot(name): the guest content becomes content
	gCompress   // WriteCompressedClusters on [off, off+n): compValue bytes
)

type guestOp struct {
	kind    guestKind
	seq     int
	off, n  int64
	unmap   bool
	newSize int64
	// noop: the operation leaves the guest content unchanged (Discard on
	// a version 2 image with a backing file).
	noop bool
	// name is the snapshot of gSnapCreate/Delete/Apply; content is the
	// guest content at its creation (gSnapCreate, gSnapApply).
	name    string
	content []byte
	// File-op marks, relative to the crash recording: the operation's
	// file operations are ops[start:end].
	start, end int
}

func (g guestOp) String() string {
	var s string
	switch g.kind {
	case gWrite:
		s = fmt.Sprintf("WriteAt [%d,+%d) tag seq %d", g.off, g.n, g.seq)
	case gZero:
		s = fmt.Sprintf("WriteZeroes [%d,+%d) unmap=%v", g.off, g.n, g.unmap)
	case gDiscard:
		s = fmt.Sprintf("Discard [%d,+%d)", g.off, g.n)
		if g.noop {
			s += " (no-op: v2 with backing)"
		}
	case gFlush:
		s = "Flush"
	case gResize:
		s = fmt.Sprintf("Resize %d", g.newSize)
	case gReopen:
		s = "Close + OpenFile"
	case gSnapCreate:
		s = fmt.Sprintf("CreateSnapshot %q", g.name)
	case gSnapDelete:
		s = fmt.Sprintf("DeleteSnapshot %q", g.name)
	case gSnapApply:
		s = fmt.Sprintf("ApplySnapshot %q", g.name)
	case gCompress:
		s = fmt.Sprintf("WriteCompressedClusters [%d,+%d) seq %d", g.off, g.n, g.seq)
	}
	return fmt.Sprintf("#%d %s  (file ops [%d,%d))", g.seq, s, g.start, g.end)
}

// value returns what the operation leaves at guest offset b, if it touches b.
func (g guestOp) value(b int64) (byte, bool) {
	if g.noop || b < g.off || b >= g.off+g.n {
		return 0, false
	}
	switch g.kind {
	case gWrite:
		return tag(g.seq, b), true
	case gZero, gDiscard:
		return 0, true
	case gCompress:
		return compValue(g.seq, b), true
	case gSnapApply:
		return g.content[b], true
	}
	return 0, false
}

// apply runs the operation on the model content.
func (g guestOp) apply(content []byte, size *int64) {
	switch g.kind {
	case gWrite:
		for b := g.off; b < g.off+g.n; b++ {
			content[b] = tag(g.seq, b)
		}
	case gZero, gDiscard:
		if !g.noop {
			clear(content[g.off : g.off+g.n])
		}
	case gCompress:
		for b := g.off; b < g.off+g.n; b++ {
			content[b] = compValue(g.seq, b)
		}
	case gSnapApply:
		copy(content, g.content)
	case gResize:
		*size = g.newSize
	}
}

// crashRun is one configuration's recorded workload and guest model.
type crashRun struct {
	cfg     crashConfig
	dir     string
	backing string // file name inside dir, "" if none
	initial []byte // guest content before the workload (backing or zeros), maxSize long
	maxSize int64
	ops     []guestOp
	rec     *crashsim.Recording
	// journal configurations: the journal's recording, on clock with
	// rec; guest operation marks are clock values then.
	jrec     *crashsim.Recording
	clock    *crashsim.Clock
	liveRead []byte // the guest content read from the live image after the workload

	snapMu sync.Mutex
	snaps  []modelSnap

	// snapshotOps: the workload has snapshot operations (their states are
	// checked by checkSnapshots); allowCopied: a version 2 image, whose
	// snapshot operations may leave OFLAG_COPIED mismatches (no dirty bit).
	snapshotOps, allowCopied bool
}

type modelSnap struct {
	l       int // guest ops applied
	content []byte
	size    int64
}

// snapshot returns the model after the first l guest operations. States
// come roughly in order of l, so it extends a recent snapshot.
func (r *crashRun) snapshot(l int) ([]byte, int64) {
	// The returned content is shared: callers must not modify it.
	r.snapMu.Lock()
	from := modelSnap{content: r.initial, size: r.cfg.size}
	for _, c := range r.snaps {
		if c.l <= l && c.l >= from.l {
			from = c
		}
	}
	r.snapMu.Unlock()
	if from.l == l {
		return from.content, from.size
	}
	content, size := slices.Clone(from.content), from.size
	for _, g := range r.ops[from.l:l] {
		g.apply(content, &size)
	}
	r.snapMu.Lock()
	if len(r.snaps) >= 4 {
		r.snaps = r.snaps[1:]
	}
	r.snaps = append(r.snaps, modelSnap{l: l, content: content, size: size})
	r.snapMu.Unlock()
	return content, size
}

func envUint(t *testing.T, name string, def uint64) uint64 {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	v, err := strconv.ParseUint(s, 0, 64)
	if err != nil {
		t.Fatalf("%s=%q: %v", name, s, err)
	}
	return v
}

func TestCrashStates(t *testing.T) {
	runCrashTest(t, "TestCrashStates", crashConfigs(), 80)
}

// runCrashTest records a workload per configuration and checks its crash
// states (defaultStates per configuration unless QCOW2_CRASH_STATES says).
func runCrashTest(t *testing.T, testName string, configs []crashConfig, defaultStates uint64) {
	qemuImg := testtools.Need(t, "qemu-img")[0]
	seed := envUint(t, "QCOW2_CRASH_SEED", uint64(time.Now().UnixNano()))
	perConfig := int(envUint(t, "QCOW2_CRASH_STATES", defaultStates))
	qemuEvery := int(envUint(t, "QCOW2_CRASH_QEMU_EVERY", 8))
	onlyConfig := os.Getenv("QCOW2_CRASH_CONFIG")
	onlyState := int(envUint(t, "QCOW2_CRASH_STATE", ^uint64(0)>>1))
	if os.Getenv("QCOW2_CRASH_STATE") == "" {
		onlyState = -1
	}
	t.Logf("seed %d (set QCOW2_CRASH_SEED=%d to repeat this run)", seed, seed)

	var total, qemuChecked, failedStates atomic.Int64
	start := time.Now()
	for i, cfg := range configs {
		if onlyConfig != "" && cfg.name != onlyConfig {
			continue
		}
		t.Run(cfg.name, func(t *testing.T) {
			run := recordCrashRun(t, cfg, seed+uint64(i)*1000003, qemuImg, nil)
			if cfg.journal {
				n, q := run.checkJournalStates(t, testName, seed, i, perConfig, qemuEvery)
				total.Add(n)
				qemuChecked.Add(q)
				return
			}
			states := run.rec.States(crashsim.Plan{
				Seed:              seed ^ uint64(i)<<40,
				ReorderedPerEpoch: max(40, perConfig/2),
				Prefixes:          max(20, perConfig/4),
			})
			if onlyState >= 0 {
				if onlyState >= len(states) {
					t.Fatalf("no state %d: this configuration has %d", onlyState, len(states))
				}
				states = states[onlyState : onlyState+1]
			} else {
				states = pickStates(states, perConfig, seed+uint64(i))
			}

			work := make(chan crashsim.State)
			var wg sync.WaitGroup
			var nfail atomic.Int64
			// qemu-img check spends most of its ~40 ms waiting, not computing:
			// more workers than CPUs keep the CPUs busy.
			for range 3 * runtime.GOMAXPROCS(0) {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for s := range work {
						withQemu := qemuEvery <= 1 || s.Index%qemuEvery == 0 ||
							s.Durable == len(run.rec.Ops()) || onlyState >= 0
						err := run.checkState(s, qemuImg, withQemu)
						total.Add(1)
						if withQemu {
							qemuChecked.Add(1)
						}
						if err != nil {
							failedStates.Add(1)
							if nfail.Add(1) <= 3 {
								opsEnv := ""
								if v := os.Getenv("QCOW2_CRASH_OPS"); v != "" {
									opsEnv = " QCOW2_CRASH_OPS=" + v
								}
								t.Errorf("%s\nreproduce: QCOW2_CRASH_SEED=%d QCOW2_CRASH_STATES=%d%s QCOW2_CRASH_CONFIG=%s QCOW2_CRASH_STATE=%d go test -run %s ./pkg/qcow2/\n%s",
									err, seed, perConfig, opsEnv, cfg.name, s.Index, testName, run.describe(s))
								keepState(t, run, s)
							}
						}
					}
				}()
			}
			for _, s := range states {
				work <- s
			}
			close(work)
			wg.Wait()
			if n := nfail.Load(); n > 0 {
				t.Errorf("%s: %d of %d crash states failed (seed %d)", cfg.name, n, len(states), seed)
			}
		})
	}
	t.Logf("%d crash states (%d also through qemu-img check), %d failed, in %v; seed %d",
		total.Load(), qemuChecked.Load(), failedStates.Load(), time.Since(start).Round(time.Millisecond), seed)
}

// noSyncFile hides the engine's Sync barriers from the Recorder, as a
// host that ignored fdatasync would.
type noSyncFile struct{ *crashsim.Recorder }

func (noSyncFile) Sync() error { return nil }

// TestCrashHarnessCatchesMissingBarriers proves the crash test can fail
// with the real engine: with its Sync barriers hidden, every write of a
// workload lands in one flush epoch, and reordering it must break rule 3
// in some state (an L2 entry that persisted without its refcount or its
// data, a table entry without its table, ...).
func TestCrashHarnessCatchesMissingBarriers(t *testing.T) {
	qemuImg := testtools.Need(t, "qemu-img")[0]
	for _, cfg := range []crashConfig{
		{name: "v3-c4k", compat: "1.1", clusterSize: 4096, size: 1 << 20},
		{name: "v3-c64k-raw", compat: "1.1", clusterSize: 65536, backing: "raw", size: 2 << 20},
	} {
		t.Run(cfg.name, func(t *testing.T) {
			run := recordCrashRun(t, cfg, 12345, qemuImg, func(r *crashsim.Recorder) qcow2.File { return noSyncFile{r} })
			if n := len(run.rec.Syncs()); n != 0 {
				t.Fatalf("%d syncs recorded through noSyncFile", n)
			}
			states := run.rec.States(crashsim.Plan{Seed: 1, ReorderedPerEpoch: 60, NoBoundaries: true})
			caught := 0
			var example error
			for _, s := range states {
				if err := run.checkState(s, qemuImg, false); err != nil {
					caught++
					if example == nil {
						example = err
					}
				}
			}
			if caught == 0 {
				t.Fatalf("none of %d reordered states of a barrier-free stream broke rule 3: the crash test cannot fail", len(states))
			}
			first, _, _ := strings.Cut(example.Error(), "\n")
			t.Logf("%d of %d states caught; e.g. %s", caught, len(states), first)
		})
	}
}

// writeBackFile keeps writes in process memory until the next Sync, like
// an engine with a write-back cache would: it breaks rule 1 (a write is
// acknowledged before the host kernel has it).
type writeBackFile struct {
	*crashsim.Recorder
	mu      sync.Mutex
	pending []pendingWrite
}

type pendingWrite struct {
	off  int64
	data []byte
}

func (w *writeBackFile) WriteAt(p []byte, off int64) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.pending = append(w.pending, pendingWrite{off, slices.Clone(p)})
	return len(p), nil
}

func (w *writeBackFile) ReadAt(p []byte, off int64) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	size, err := w.sizeLocked()
	if err != nil {
		return 0, err
	}
	n, err := w.Recorder.ReadAt(p, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return n, err
	}
	clear(p[n:])
	for _, pw := range w.pending {
		lo, hi := max(off, pw.off), min(off+int64(len(p)), pw.off+int64(len(pw.data)))
		if lo < hi {
			copy(p[lo-off:hi-off], pw.data[lo-pw.off:])
		}
	}
	if avail := size - off; avail < int64(len(p)) {
		return int(max(avail, 0)), io.EOF
	}
	return len(p), nil
}

func (w *writeBackFile) sizeLocked() (int64, error) {
	size, err := w.Recorder.Size()
	for _, pw := range w.pending {
		size = max(size, pw.off+int64(len(pw.data)))
	}
	return size, err
}

func (w *writeBackFile) Size() (int64, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.sizeLocked()
}

func (w *writeBackFile) drainLocked() error {
	for _, pw := range w.pending {
		if _, err := w.Recorder.WriteAt(pw.data, pw.off); err != nil {
			return err
		}
	}
	w.pending = nil
	return nil
}

func (w *writeBackFile) Sync() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.drainLocked(); err != nil {
		return err
	}
	return w.Recorder.Sync()
}

func (w *writeBackFile) Truncate(size int64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.drainLocked(); err != nil {
		return err
	}
	return w.Recorder.Truncate(size)
}

func (w *writeBackFile) PunchHole(off, n int64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.drainLocked(); err != nil {
		return err
	}
	return w.Recorder.PunchHole(off, n)
}

func (w *writeBackFile) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.drainLocked(); err != nil {
		return err
	}
	return w.Recorder.Close()
}

// TestCrashHarnessCatchesWriteBack: an engine that keeps acknowledged
// writes in memory until the next flush loses them when the process is
// killed; the guest-content checks (c) must see it.
func TestCrashHarnessCatchesWriteBack(t *testing.T) {
	qemuImg := testtools.Need(t, "qemu-img")[0]
	cfg := crashConfig{name: "v3-c4k-raw", compat: "1.1", clusterSize: 4096, backing: "raw", size: 1 << 20}
	run := recordCrashRun(t, cfg, 4242, qemuImg, func(r *crashsim.Recorder) qcow2.File { return &writeBackFile{Recorder: r} })
	states := run.rec.States(crashsim.Plan{Seed: 1, Prefixes: 60, NoBoundaries: true})
	caught := 0
	var example string
	for _, s := range states {
		err := run.checkState(s, qemuImg, false)
		if err != nil && strings.Contains(err.Error(), "(c) durable data lost") {
			caught++
			if example == "" {
				example, _, _ = strings.Cut(err.Error(), "\n")
			}
		}
	}
	if caught == 0 {
		t.Fatalf("none of %d process-kill states of a write-back engine lost acknowledged data: check (c) cannot fail", len(states))
	}
	t.Logf("%d of %d states caught; e.g. %s", caught, len(states), example)
}

// pickStates keeps at most n states: every Boundary state while there is
// room, the final state, and a deterministic random choice of the rest.
func pickStates(states []crashsim.State, n int, seed uint64) []crashsim.State {
	if len(states) <= n {
		return states
	}
	rng := rand.New(rand.NewPCG(seed, 77))
	keep := make([]bool, len(states))
	kept := 0
	keep[len(states)-1], kept = true, 1 // the final state: a clean close
	var rest []int
	for i, s := range states[:len(states)-1] {
		if s.Kind == crashsim.Boundary && kept < n/2 {
			keep[i] = true
			kept++
		} else {
			rest = append(rest, i)
		}
	}
	rng.Shuffle(len(rest), func(i, j int) { rest[i], rest[j] = rest[j], rest[i] })
	for _, i := range rest[:max(0, min(len(rest), n-kept))] {
		keep[i] = true
	}
	var out []crashsim.State
	for i, s := range states {
		if keep[i] {
			out = append(out, s)
		}
	}
	return out
}

// recordCrashRun creates the image on a Recorder, runs a random workload
// with a guest model, and returns the recording from just after creation.
//
// wrap, if not nil, stands between the engine and the Recorder.
func recordCrashRun(t *testing.T, cfg crashConfig, seed uint64, qemuImg string, wrap func(*crashsim.Recorder) qcow2.File) *crashRun {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 1))
	run := &crashRun{cfg: cfg, dir: crashTempDir(t)}
	// Resize may grow the disk past 2 MiB: at 512 B clusters that is more
	// L1 entries than one cluster holds, at 4 KiB a second L1 entry.
	run.maxSize = max(cfg.size+cfg.size/2, 5<<19)
	run.initial = make([]byte, run.maxSize)

	opts := qcow2.CreateOptions{
		Size:          cfg.size,
		ClusterSize:   cfg.clusterSize,
		Compat:        cfg.compat,
		LazyRefcounts: cfg.lazy,
		RefcountBits:  cfg.refcountBits,
		ExtendedL2:    cfg.extendedL2,
	}
	if cfg.backing != "" {
		// Backing content: tagged data with some zero runs (which a
		// qcow2 backing file leaves unallocated).
		base := make([]byte, cfg.size)
		for b := range base {
			base[b] = tag(0, int64(b))
		}
		for range 4 {
			off := rng.Int64N(cfg.size)
			n := min(cfg.size-off, cfg.clusterSize*(1+rng.Int64N(4)))
			clear(base[off : off+n])
		}
		if cfg.extendedL2 {
			// Zero subclusters beside tagged ones in the same cluster:
			// a write allocating one needs no sync, one allocating
			// its neighbour does (subclusterBurst).
			scs := cfg.clusterSize / 32
			for range 4 * cfg.size / cfg.clusterSize {
				off := rng.Int64N(cfg.size/scs) * scs
				clear(base[off:min(cfg.size, off+scs*(1+rng.Int64N(3)))])
			}
		}
		copy(run.initial, base)
		raw := filepath.Join(run.dir, "base.raw")
		if err := os.WriteFile(raw, base, 0o444); err != nil {
			t.Fatal(err)
		}
		run.backing = "base.raw"
		if cfg.backing == "qcow2" {
			run.backing = "base.qcow2"
			out, err := exec.Command(qemuImg, "convert", "-f", "raw", "-O", "qcow2",
				"-o", fmt.Sprintf("cluster_size=%d", cfg.clusterSize),
				raw, filepath.Join(run.dir, run.backing)).CombinedOutput()
			if err != nil {
				t.Fatalf("qemu-img convert: %v\n%s", err, out)
			}
			if err := os.Chmod(filepath.Join(run.dir, run.backing), 0o444); err != nil {
				t.Fatal(err)
			}
		}
		opts.BackingFile = run.backing
		opts.BackingFormat = cfg.backing
	}

	r := crashsim.NewRecorder(nil)
	var jr *crashsim.Recorder
	if cfg.journal {
		run.clock = &crashsim.Clock{}
		r, jr = crashsim.NewRecorderOn(run.clock, nil), crashsim.NewRecorderOn(run.clock, nil)
	}
	openOpts := func() qcow2.Options {
		if jr == nil {
			return qcow2.Options{}
		}
		jr.Reopen()
		return qcow2.WithJournal(qcow2.Options{}, jr, bootA)
	}
	var f qcow2.File = r
	if wrap != nil {
		f = wrap(r)
	}
	name := filepath.Join(run.dir, "top.qcow2")
	if err := qcow2.CreateFile(f, name, opts); err != nil {
		t.Fatalf("CreateFile(%+v): %v", opts, err)
	}
	r.Reopen() // whether or not CreateFile closed it
	from := r.Len()
	jfrom := 0
	if jr != nil {
		jfrom = jr.Len()
	}
	img, err := qcow2.OpenFile(f, name, openOpts())
	if err != nil {
		t.Fatalf("OpenFile: %v", err)
	}
	mark := func() int { return r.Len() - from }
	if run.clock != nil {
		// Two files: guest operations are placed on the shared clock.
		mark = func() int { return int(run.clock.Now()) }
	}

	size := cfg.size
	cs := cfg.clusterSize
	var written [][2]int64 // ranges written, for rewrites
	var burst [][2]int64   // writes still to make, one op each, before any other op
	nops := 30 + rng.IntN(20)
	if n, err := strconv.Atoi(os.Getenv("QCOW2_CRASH_OPS")); err == nil && n > 0 {
		nops = n
	}
	switch {
	case cfg.concurrent:
		run.ops = concurrentWorkload(t, img, mark, rng, size, cs, nops)
	case cfg.snapshots:
		run.snapshotOps, run.allowCopied = true, cfg.compat == "0.10"
		img = snapshotWorkload(t, run, img, f, r, name, mark, rng, nops)
	default:
		for seq := 1; seq <= nops; seq++ {
			g := guestOp{seq: seq, start: mark()}
			var opErr error
			p := rng.IntN(100)
			if len(burst) > 0 {
				p = 0
			}
			shapes := 6
			if cfg.extendedL2 {
				shapes = 9 // three in nine: subclusterBurst
			}
			switch {
			case p < 55: // writes of every shape
				g.kind = gWrite
				switch q := rng.IntN(shapes); {
				case len(burst) > 0:
					g.off, g.n, burst = burst[0][0], burst[0][1], burst[1:]
				case q >= 6:
					burst = subclusterBurst(rng, run.initial, size, cs)
					g.off, g.n, burst = burst[0][0], burst[0][1], burst[1:]
				case q == 0 && len(written) > 0: // rewrite an earlier range
					w := written[rng.IntN(len(written))]
					g.off, g.n = w[0], w[1]
				case q == 1: // small, anywhere
					g.n = 1 + rng.Int64N(600)
					g.off = rng.Int64N(size - g.n)
				case q == 2: // crossing a cluster boundary
					g.n = 2 + rng.Int64N(2*cs)
					c := 1 + rng.Int64N(size/cs-2)
					g.off = c*cs - 1 - rng.Int64N(min(g.n-1, cs))
				case q == 3: // whole aligned clusters
					k := 1 + rng.Int64N(4)
					g.off = rng.Int64N(size/cs-k) * cs
					g.n = k * cs
				default: // partial cluster / multi-cluster, unaligned
					g.n = 1 + rng.Int64N(min(3*cs, size/4))
					g.off = rng.Int64N(size - g.n)
				}
				g.n = min(g.n, size-g.off)
				buf := make([]byte, g.n)
				for i := range buf {
					buf[i] = tag(seq, g.off+int64(i))
				}
				_, opErr = img.WriteAt(buf, g.off)
				written = append(written, [2]int64{g.off, g.n})
			case p < 65:
				g.kind = gZero
				g.off, g.n = randRange(rng, size, cs)
				g.unmap = rng.IntN(2) == 0
				opErr = img.WriteZeroes(g.off, g.n, g.unmap)
			case p < 75:
				g.kind = gDiscard
				g.off, g.n = randRange(rng, size, cs)
				g.noop = cfg.compat == "0.10" && cfg.backing != ""
				opErr = img.Discard(g.off, g.n)
			case p < 89:
				g.kind = gFlush
				opErr = img.Flush()
			case p < 93: // close and reopen: crash states inside Close and Open
				g.kind = gReopen
				if opErr = img.Close(); opErr == nil {
					r.Reopen()
					img, opErr = qcow2.OpenFile(f, name, openOpts())
				}
			default:
				g.kind = gResize
				grow := (1 + rng.Int64N(max(1, (run.maxSize-size)/2/512))) * 512
				if size+grow > run.maxSize {
					g.kind = gFlush
					opErr = img.Flush()
					break
				}
				g.newSize = size + grow
				opErr = img.Resize(g.newSize)
				size = g.newSize
			}
			g.end = mark()
			if opErr != nil {
				t.Fatalf("guest op %v: %v", g, opErr)
			}
			run.ops = append(run.ops, g)
		}
	}
	if got := img.Size(); got != size {
		t.Fatalf("image size %d after the workload, model says %d", got, size)
	}
	// The live image must match the model before any crash is simulated.
	live := make([]byte, size)
	if _, err := img.ReadAt(live, 0); err != nil {
		t.Fatalf("reading the live image: %v", err)
	}
	want, _ := run.snapshot(len(run.ops))
	if i := firstDiff(live, want[:size]); i >= 0 {
		t.Fatalf("live image differs from the model at guest offset %d: got %#x want %#x (no crash involved); guest ops that wrote it:\n%s",
			i, live[i], want[i], run.guestOpsString(int64(i)))
	}
	run.liveRead = live
	if err := img.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	run.rec = r.Recording().Since(from)
	if jr != nil {
		run.jrec = jr.Recording().Since(jfrom)
	}
	return run
}

// crashTempDir returns a temporary directory for the crash states, on
// tmpfs when there is one: every state is written, opened, synced and
// checked, and fsync on a real disk would dominate the run time.
func crashTempDir(t *testing.T) string {
	for _, parent := range []string{os.Getenv("QCOW2_CRASH_TMP"), "/dev/shm"} {
		if parent == "" {
			continue
		}
		if dir, err := os.MkdirTemp(parent, "qcow2-crash-"); err == nil {
			t.Cleanup(func() { os.RemoveAll(dir) })
			return dir
		}
	}
	return t.TempDir()
}

// subclusterBurst returns 3 to 5 writes of single subclusters (whole or
// part) of one cluster, made one after the other with nothing between
// them. The cluster is one where the backing content (initial) has zero
// and non-zero subclusters side by side, and the burst writes a non-zero
// one before a zero one: the first needs its data durable before its
// mapping, the second does not, and it rewrites the L2 entry the first
// left (issue 9, item 1). Writes before and after those two are random.
func subclusterBurst(rng *rand.Rand, initial []byte, size, cs int64) [][2]int64 {
	scs := cs / 32
	subZero := func(c, s int64) bool { return qcow2.IsZero(initial[c*cs+s*scs : c*cs+(s+1)*scs]) }
	pick := func(c int64, zero bool) int64 {
		for range 64 {
			if s := rng.Int64N(32); subZero(c, s) == zero {
				return s
			}
		}
		return rng.Int64N(32)
	}
	c := rng.Int64N(size / cs)
	for range 64 {
		zeros := 0
		for s := range int64(32) {
			if subZero(c, s) {
				zeros++
			}
		}
		if zeros > 0 && zeros < 32 {
			break
		}
		c = rng.Int64N(size / cs)
	}
	subs := []int64{rng.Int64N(32), pick(c, false), pick(c, true)}
	for range rng.IntN(3) {
		subs = append(subs, rng.Int64N(32))
	}
	var out [][2]int64
	for _, s := range subs {
		off, n := c*cs+s*scs, scs
		if rng.IntN(3) == 0 {
			n = 1 + rng.Int64N(scs)
			off += rng.Int64N(scs - n + 1)
		}
		out = append(out, [2]int64{off, min(n, size-off)})
	}
	return out
}

// randRange returns a range for WriteZeroes/Discard: usually whole
// clusters, sometimes unaligned.
func randRange(rng *rand.Rand, size, cs int64) (int64, int64) {
	if rng.IntN(3) == 0 {
		n := 1 + rng.Int64N(min(3*cs, size/4))
		return rng.Int64N(size - n), n
	}
	k := 1 + rng.Int64N(min(8, size/cs/2))
	return rng.Int64N(size/cs-k) * cs, k * cs
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

// guestOpsString lists the guest operations; with b >= 0, only those
// that touch guest offset b.
func (r *crashRun) guestOpsString(b int64) string {
	var sb strings.Builder
	for _, g := range r.ops {
		if _, ok := g.value(b); ok || b < 0 {
			fmt.Fprintf(&sb, "    %v\n", g)
		}
	}
	return sb.String()
}

func (r *crashRun) describe(s crashsim.State) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "config %+v\n", r.cfg)
	sb.WriteString(r.rec.Explain(s))
	sb.WriteString("guest operations:\n")
	sb.WriteString(r.guestOpsString(-1))
	lo, hi := max(0, s.Durable-20), min(len(r.rec.Ops()), s.Crash+5)
	fmt.Fprintf(&sb, "file operations [%d,%d) of %d:\n%s", lo, hi, len(r.rec.Ops()), r.rec.OpsString(lo, hi))
	return sb.String()
}

func keepState(t *testing.T, r *crashRun, s crashsim.State) {
	dir := os.Getenv("QCOW2_CRASH_KEEP")
	if dir == "" {
		return
	}
	_ = os.MkdirAll(dir, 0o755)
	p := filepath.Join(dir, fmt.Sprintf("%s-state%d.qcow2", r.cfg.name, s.Index))
	if err := os.WriteFile(p, r.rec.Materialize(s), 0o644); err != nil {
		t.Log(err)
		return
	}
	if r.backing != "" {
		b, _ := os.ReadFile(filepath.Join(r.dir, r.backing))
		_ = os.WriteFile(filepath.Join(dir, r.backing), b, 0o444)
	}
	t.Logf("crash state kept in %s", p)
}

// checkState materialises crash state s and checks rule 3 on it.
func (r *crashRun) checkState(s crashsim.State, qemuImg string, withQemu bool) error {
	path := filepath.Join(r.dir, fmt.Sprintf("crash-%d.qcow2", s.Index))
	data := r.rec.Materialize(s)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return err
	}
	defer os.Remove(path)

	// Without lazy refcounts the crash state itself must check clean
	// (leaks allowed), before the engine's open has a chance to fix it,
	// unless a snapshot operation had set the dirty bit (version 3):
	// then the open rebuilds the refcounts, as for lazy refcounts.
	if !r.cfg.lazy && !dirtyBit(data) {
		if err := checkImage(path, qemuImg, false, false, r.allowCopied); err != nil {
			return fmt.Errorf("%v: (b) the crash state as found: %w", s, err)
		}
	}

	// (a) opens writable (the engine rebuilds refcounts of a dirty image).
	// The guest content for (c), (d) is read through this handle.
	img, err := qcow2.Open(path, qcow2.Options{})
	if err != nil {
		return fmt.Errorf("%v: (a) writable Open failed: %w", s, err)
	}
	got := make([]byte, img.Size())
	_, readErr := img.ReadAt(got, 0)
	if readErr == nil && r.snapshotOps {
		readErr = r.checkSnapshots(s, img)
	}
	if err := img.Close(); err != nil {
		return fmt.Errorf("%v: (a) Close after writable open failed: %w", s, err)
	}
	if readErr != nil {
		return fmt.Errorf("%v: reading the guest content (and snapshots): %w", s, readErr)
	}

	// (b) no corruption (leaks are allowed; none after a clean close).
	final := s.Durable == len(r.rec.Ops())
	if err := checkImage(path, qemuImg, withQemu, final, r.allowCopied); err != nil {
		return fmt.Errorf("%v: (b) %w", s, err)
	}

	// (c), (d): guest content.
	if final && !bytes.Equal(got, r.liveRead) {
		return fmt.Errorf("%v: the final (clean close) state differs from what the live image read", s)
	}
	if err := r.checkContent(s, got); err != nil {
		return err
	}

	// After recovery the image must stay usable: new allocations must not
	// land on clusters that are in use (a cluster with two owners).
	// Checked on every other state (and every qemu-img one).
	if !withQemu && s.Index%2 != 0 {
		return nil
	}
	rng := rand.New(rand.NewPCG(s.Seed, uint64(s.Index)))
	if err := r.writeAfterRecovery(path, got, qcow2.Options{}, rng, qemuImg, withQemu); err != nil {
		return fmt.Errorf("%v: %w", s, err)
	}
	return nil
}

// writeAfterRecovery opens a recovered image with opts, writes three
// random ranges, closes it, and checks that it checks clean and that the
// writes changed nothing else: new allocations must not land on clusters
// in use (a cluster with two owners). got is the content before.
func (r *crashRun) writeAfterRecovery(path string, got []byte, opts qcow2.Options, rng *rand.Rand, qemuImg string, withQemu bool) error {
	img, err := qcow2.Open(path, opts)
	if err != nil {
		return fmt.Errorf("reopening after recovery: %w", err)
	}
	want := slices.Clone(got)
	for k := range 3 {
		n := min(int64(len(got)), 1+rng.Int64N(2*r.cfg.clusterSize))
		off := rng.Int64N(int64(len(got)) - n + 1)
		buf := make([]byte, n)
		for i := range buf {
			buf[i] = tag(1000000+k, off+int64(i))
		}
		if _, err := img.WriteAt(buf, off); err != nil {
			img.Close()
			return fmt.Errorf("writing [%d,+%d) after recovery: %w", off, n, err)
		}
		copy(want[off:], buf)
	}
	if err := img.Close(); err != nil {
		return fmt.Errorf("Close after writes after recovery: %w", err)
	}
	if err := checkImage(path, qemuImg, withQemu, false, r.allowCopied); err != nil {
		return fmt.Errorf("after recovery and 3 new writes: %w", err)
	}
	got2, err := readGuest(path)
	if err != nil {
		return fmt.Errorf("after recovery and 3 new writes: %w", err)
	}
	if i := firstDiff(got2, want); i >= 0 {
		return fmt.Errorf("after recovery, 3 new writes changed other data: guest offset %d reads %#x, want %#x (cluster %d)",
			i, got2[i], want[i], int64(i)/r.cfg.clusterSize)
	}
	return nil
}

// readGuest opens the image read-only and reads the whole guest.
func readGuest(path string) ([]byte, error) {
	return readGuestOpts(path, qcow2.Options{ReadOnly: true})
}

// checkImage runs the engine's Check and, when withQemu, qemu-img check.
// Exit 0 or 3 (leaks only) passes; a clean close must give 0. With
// allowCopied (version 2 images with snapshots, docs/engine.md) OFLAG_COPIED
// mismatches are tolerated too, unless final.
func checkImage(path, qemuImg string, withQemu, final, allowCopied bool) error {
	res, err := qcow2.Check(path, qcow2.CheckOptions{})
	if err != nil {
		return fmt.Errorf("qcow2.Check: %w", err)
	}
	engineCode := res.ExitCode()
	copiedOnly := allowCopied && !final && engineCode == 2 && onlyCopiedErrors(res)
	if engineCode != 0 && (engineCode != 3 || final) && !copiedOnly {
		msgs := res.Messages
		if len(msgs) > 20 {
			msgs = msgs[:20]
		}
		return fmt.Errorf("qcow2.Check exit %d (%d corruptions, %d leaks, %d check errors):\n  %s",
			engineCode, res.Corruptions, res.Leaks, res.CheckErrors, strings.Join(msgs, "\n  "))
	}
	if !withQemu {
		return nil
	}
	qemuCode, out, err := qemuCheck(qemuImg, path)
	if err != nil {
		return err
	}
	if copiedOnly && qemuCode == 2 && !onlyCopiedErrorLines(out) {
		return fmt.Errorf("qemu-img check exit 2 reports more than OFLAG_COPIED mismatches:\n%s", trimCheckOutput(out))
	}
	if qemuCode != 0 && (qemuCode != 3 || final) && !(copiedOnly && qemuCode == 2) {
		return fmt.Errorf("qemu-img check exit %d (qcow2.Check said %d):\n%s", qemuCode, engineCode, trimCheckOutput(out))
	}
	if qemuCode != engineCode {
		return fmt.Errorf("qcow2.Check exit %d disagrees with qemu-img check exit %d:\n%s", engineCode, qemuCode, trimCheckOutput(out))
	}
	return nil
}

// dirtyBit reports whether the image file data (version 3) has the dirty
// bit set in its header.
func dirtyBit(data []byte) bool {
	if len(data) < 80 || binary.BigEndian.Uint32(data[4:]) < 3 {
		return false
	}
	return binary.BigEndian.Uint64(data[72:])&1 != 0
}

// onlyCopiedErrors: the corruptions Check found are OFLAG_COPIED mismatches.
func onlyCopiedErrors(res *qcow2.CheckResult) bool {
	if res.CheckErrors != 0 || res.Corruptions == 0 {
		return false
	}
	n := 0
	for _, m := range res.Messages {
		if strings.HasPrefix(m, "ERROR") {
			if !strings.Contains(m, "OFLAG_COPIED") {
				return false
			}
			n++
		}
	}
	return n == res.Corruptions
}

// onlyCopiedErrorLines: every ERROR line of qemu-img check's report is an
// OFLAG_COPIED mismatch.
func onlyCopiedErrorLines(out []byte) bool {
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "ERROR") && !strings.Contains(line, "OFLAG_COPIED") {
			return false
		}
	}
	return true
}

func qemuCheck(qemuImg, path string) (int, []byte, error) {
	out, err := exec.Command(qemuImg, "check", "-f", "qcow2", path).CombinedOutput()
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			return 0, out, fmt.Errorf("qemu-img check: %v", err)
		}
		return ee.ExitCode(), out, nil
	}
	return 0, out, nil
}

// trimCheckOutput shortens qemu-img check's report: one line per leaked
// cluster can run to thousands.
func trimCheckOutput(out []byte) string {
	var sb strings.Builder
	leaks, lines := 0, 0
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "Leaked cluster") {
			if leaks++; leaks > 3 {
				continue
			}
		}
		if lines++; lines > 40 {
			sb.WriteString("...\n")
			break
		}
		sb.WriteString(line + "\n")
	}
	if leaks > 3 {
		fmt.Fprintf(&sb, "(%d \"Leaked cluster\" lines in all)\n", leaks)
	}
	return sb.String()
}

// checkContent checks (c) and (d) on the guest content read from state s.
func (r *crashRun) checkContent(s crashsim.State, got []byte) error {
	// Guest operations that returned before file op Durable are durable;
	// those that started before Crash may or may not have persisted.
	// With concurrent guests the durable operations need not be a
	// prefix: take the longest durable prefix, then apply the durable
	// operations after it (they touch other parts of the disk than the
	// non-durable operations before them).
	l := 0
	for l < len(r.ops) && r.ops[l].end <= s.Durable {
		l++
	}
	var pending, lateDurable []guestOp
	for _, g := range r.ops[l:] {
		switch {
		case g.end <= s.Durable:
			lateDurable = append(lateDurable, g)
		case g.start < s.Crash:
			pending = append(pending, g)
		}
	}
	snap, snapSize := r.snapshot(l)
	if len(lateDurable) > 0 {
		snap = slices.Clone(snap)
		for _, g := range lateDurable {
			g.apply(snap, &snapSize)
		}
		l += len(lateDurable)
	}
	sizes := []int64{snapSize}
	for _, g := range pending {
		if g.kind == gResize {
			sizes = append(sizes, g.newSize)
		}
	}
	if !slices.Contains(sizes, int64(len(got))) {
		return fmt.Errorf("%v: virtual size %d, want one of %v (durable guest ops: first %d)", s, len(got), sizes, l)
	}
	type bad struct {
		lo, hi   int64
		never    bool // (d): a value never written at that offset
		got, exp byte
	}
	var bads []bad
	const blk = 4096
	var near []guestOp
	for lo := int64(0); lo < int64(len(got)); lo += blk {
		hi := min(lo+blk, int64(len(got)))
		if bytes.Equal(got[lo:hi], snap[lo:hi]) {
			continue
		}
		near = near[:0]
		for _, g := range pending {
			if !g.noop && g.off < hi && g.off+g.n > lo {
				near = append(near, g)
			}
		}
		for b := lo; b < hi; b++ {
			v := got[b]
			if v == snap[b] {
				continue
			}
			ok := false
			for _, g := range near {
				if w, touches := g.value(b); touches && w == v {
					ok = true
					break
				}
			}
			if ok {
				continue
			}
			// Not allowed. Was it ever written here (or zero, or the
			// initial content)? Otherwise it is (d).
			never := v != 0 && v != r.initial[b]
			if never {
				for _, g := range r.ops {
					if g.start >= s.Crash {
						break
					}
					if w, touches := g.value(b); touches && w == v {
						never = false
						break
					}
				}
			}
			if n := len(bads); n > 0 && bads[n-1].hi == b && bads[n-1].never == never {
				bads[n-1].hi = b + 1
				continue
			}
			bads = append(bads, bad{lo: b, hi: b + 1, never: never, got: v, exp: snap[b]})
		}
	}
	if len(bads) == 0 {
		return nil
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "%v: guest content breaks rule 3 in %d range(s); %d guest ops durable, %d pending:\n", s, len(bads), l, len(pending))
	for i, x := range bads {
		if i == 4 {
			fmt.Fprintf(&sb, "  ...\n")
			break
		}
		what := "(c) durable data lost or replaced by stale data"
		if x.never {
			what = "(d) bytes never written at this offset"
		}
		fmt.Fprintf(&sb, "  guest [%d,%d) (cluster %d): %s; first byte got %#x, durable value %#x\n",
			x.lo, x.hi, x.lo/r.cfg.clusterSize, what, x.got, x.exp)
		if i == 0 {
			fmt.Fprintf(&sb, "  guest ops that wrote offset %d:\n%s", x.lo, r.guestOpsString(x.lo))
		}
	}
	return errors.New(sb.String())
}
