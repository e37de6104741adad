package qcow2_test

// Crash states of a commit (issue 3, acceptance 6): the top image and its
// backing file are each recorded (internal/crashsim, one Clock, so a
// file's Sync covers only that file), and every crash state of the pair
// must satisfy:
//
//	(h) both files open (a dirty one rebuilds its refcounts) and check
//	    clean, leaks allowed (none after the whole commit);
//	(i) the chain (top over backing) reads exactly the guest content it
//	    read before the commit: a commit only copies what the top defines
//	    into the backing file, and empties the top only after that copy is
//	    durable;
//	(j) the backing file alone reads, at each byte, its old value or the
//	    chain's (the committed one): nothing else;
//	(k) after the whole commit the backing file reads the chain's content,
//	    and the top is empty (or, with drop, untouched).
//
// Knobs: QCOW2_CRASH_SEED and QCOW2_CRASH_STATES (default 32 per
// configuration) as for TestCrashStates; the backing files are qcow2
// (a raw backing file is written with pwrite and one fdatasync).

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/csi-qcow2/csi-qcow2/internal/crashsim"
	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

type commitCrashConfig struct {
	name      string
	base, top qcow2.CreateOptions
	drop      bool
}

func commitCrashConfigs() []commitCrashConfig {
	const mib = 1 << 20
	return []commitCrashConfig{
		{name: "v3-c4k-into-c64k", base: qcow2.CreateOptions{Size: 2 * mib, ClusterSize: 4096}, top: qcow2.CreateOptions{ClusterSize: 65536}},
		{name: "v3lazy-c64k-into-c4k", base: qcow2.CreateOptions{Size: 2 * mib, ClusterSize: 65536, LazyRefcounts: true},
			top: qcow2.CreateOptions{ClusterSize: 4096, LazyRefcounts: true}},
		{name: "v2-into-v3", base: qcow2.CreateOptions{Size: 2 * mib, ClusterSize: 65536, Compat: "0.10"}, top: qcow2.CreateOptions{ClusterSize: 65536}},
		{name: "v3-grow-base", base: qcow2.CreateOptions{Size: mib, ClusterSize: 65536}, top: qcow2.CreateOptions{Size: 2 * mib, ClusterSize: 4096}},
		{name: "v3-drop", base: qcow2.CreateOptions{Size: mib, ClusterSize: 4096}, top: qcow2.CreateOptions{ClusterSize: 4096}, drop: true},
	}
}

// commitRun is one configuration's recorded commit.
type commitRun struct {
	cfg       commitCrashConfig
	dir       string
	recs      []*crashsim.Recording // base, top
	chain     []byte                // the guest content of the chain
	oldBase   []byte                // the backing file's own content before the commit
	topBefore []byte                // the top file before the commit
}

func TestCrashStatesCommit(t *testing.T) {
	qemuImg := testtools.Need(t, "qemu-img")[0]
	seed := envUint(t, "QCOW2_CRASH_SEED", uint64(time.Now().UnixNano()))
	perConfig := int(envUint(t, "QCOW2_CRASH_STATES", 32))
	t.Logf("seed %d (set QCOW2_CRASH_SEED=%d to repeat this run)", seed, seed)
	for i, cfg := range commitCrashConfigs() {
		t.Run(cfg.name, func(t *testing.T) {
			t.Parallel()
			run := recordCommit(t, cfg, seed+uint64(i), nil)
			states := crashsim.GroupStates(run.recs, crashsim.Plan{Seed: seed ^ uint64(i)<<40, ReorderedPerEpoch: 8, Prefixes: 12})
			states = pickGroupStates(states, perConfig, seed+uint64(i))
			var failed atomic.Int64
			work := make(chan crashsim.GroupState)
			var wg sync.WaitGroup
			for range 2 * runtime.GOMAXPROCS(0) {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for s := range work {
						if err := run.check(s, qemuImg, s.Index%8 == 0 || s.Index == states[len(states)-1].Index); err != nil {
							if failed.Add(1) <= 3 {
								t.Errorf("%v\nreproduce: QCOW2_CRASH_SEED=%d QCOW2_CRASH_STATES=%d go test -run 'TestCrashStatesCommit/%s' ./pkg/qcow2/", err, seed, perConfig, cfg.name)
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
			t.Logf("%d crash states, %d failed", len(states), failed.Load())
		})
	}
}

// TestCrashCommitHarnessCatchesEarlyEmptying: with the backing file's
// syncs hidden, the top is emptied while the committed data may not be
// durable; check (i) must catch a state that lost it.
func TestCrashCommitHarnessCatchesEarlyEmptying(t *testing.T) {
	qemuImg := testtools.Need(t, "qemu-img")[0]
	cfg := commitCrashConfigs()[0]
	run := recordCommit(t, cfg, 99, func(r *crashsim.Recorder) qcow2.File { return noSyncFile{r} })
	caught := 0
	states := crashsim.GroupStates(run.recs, crashsim.Plan{Seed: 1, ReorderedPerEpoch: 6, NoBoundaries: true})
	for _, s := range states {
		if err := run.check(s, qemuImg, false); err != nil && strings.Contains(err.Error(), "(i)") {
			caught++
		}
	}
	if caught == 0 {
		t.Fatalf("none of %d states lost committed data although the backing file was never synced: check (i) cannot fail", len(states))
	}
	t.Logf("%d of %d states caught", caught, len(states))
}

// pickGroupStates keeps at most n states: the last one (the whole
// commit) and a deterministic random choice of the others.
func pickGroupStates(states []crashsim.GroupState, n int, seed uint64) []crashsim.GroupState {
	if len(states) <= n {
		return states
	}
	rng := rand.New(rand.NewPCG(seed, 78))
	last := states[len(states)-1]
	rest := states[:len(states)-1]
	rng.Shuffle(len(rest), func(i, j int) { rest[i], rest[j] = rest[j], rest[i] })
	return append(rest[:n-1], last)
}

// recordCommit builds a backing file and a top with a random workload as
// ordinary files, then commits them with each file on a Recorder. wrapBase,
// if set, stands between the backing image and its Recorder.
func recordCommit(t *testing.T, cfg commitCrashConfig, seed uint64, wrapBase func(*crashsim.Recorder) qcow2.File) *commitRun {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 2))
	run := &commitRun{cfg: cfg, dir: crashTempDir(t)}
	basePath, topPath := filepath.Join(run.dir, "base.qcow2"), filepath.Join(run.dir, "top.qcow2")
	if err := qcow2.Create(basePath, cfg.base); err != nil {
		t.Fatal(err)
	}
	base, err := qcow2.Open(basePath, qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	bsize := cfg.base.Size
	for range 6 {
		off, n := randRange(rng, bsize, cfg.base.ClusterSize)
		buf := make([]byte, n)
		for i := range buf {
			buf[i] = tag(0, off+int64(i))
		}
		if _, err := base.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	mustClose(t, base)
	tco := cfg.top
	tco.BackingFile, tco.BackingFormat = "base.qcow2", "qcow2"
	if err := qcow2.Create(topPath, tco); err != nil {
		t.Fatal(err)
	}
	top, err := qcow2.Open(topPath, qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	size := top.Size()
	for seq := 1; seq <= 25; seq++ {
		off, n := randRange(rng, size, cfg.top.ClusterSize)
		switch p := rng.IntN(10); {
		case p < 6:
			buf := make([]byte, n)
			for i := range buf {
				buf[i] = tag(seq, off+int64(i))
			}
			_, err = top.WriteAt(buf, off)
		case p < 8:
			err = top.WriteZeroes(off, n, p == 7)
		default:
			err = top.Discard(off, n)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	run.chain = make([]byte, size)
	if _, err := top.ReadAt(run.chain, 0); err != nil {
		t.Fatal(err)
	}
	mustClose(t, top)
	run.oldBase = readGuestOrFail(t, basePath, qcow2.Options{ReadOnly: true})

	// The commit, on Recorders holding the two files.
	var clock crashsim.Clock
	load := func(p string) []byte {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	run.topBefore = load(topPath)
	rb, rt := crashsim.NewRecorderOn(&clock, load(basePath)), crashsim.NewRecorderOn(&clock, run.topBefore)
	var bf qcow2.File = rb
	if wrapBase != nil {
		bf = wrapBase(rb)
	}
	baseImg, err := qcow2.OpenFile(bf, basePath, qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	topImg, err := qcow2.OpenFile(rt, topPath, qcow2.Options{NoBacking: true, ReadOnly: cfg.drop})
	if err != nil {
		t.Fatal(err)
	}
	if err := qcow2.CommitImages(topImg, baseImg, cfg.drop); err != nil {
		t.Fatalf("commit: %v", err)
	}
	run.recs = []*crashsim.Recording{rb.Recording(), rt.Recording()}
	t.Logf("commit: %d operations on the backing file, %d on the top", len(run.recs[0].Ops()), len(run.recs[1].Ops()))
	return run
}

func mustClose(t *testing.T, img *qcow2.Image) {
	t.Helper()
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
}

func readGuestOrFail(t *testing.T, path string, opts qcow2.Options) []byte {
	t.Helper()
	b, err := readGuestOpts(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// readGuestOpts opens path with opts, reads the whole guest and closes it.
func readGuestOpts(path string, opts qcow2.Options) ([]byte, error) {
	img, err := qcow2.Open(path, opts)
	if err != nil {
		return nil, fmt.Errorf("open: %w", err)
	}
	got := make([]byte, img.Size())
	_, err = img.ReadAt(got, 0)
	if cerr := img.Close(); err == nil {
		err = cerr
	}
	return got, err
}

// check materialises the pair in state s and checks (h)-(k).
func (r *commitRun) check(s crashsim.GroupState, qemuImg string, withQemu bool) error {
	dir, err := os.MkdirTemp(r.dir, "state-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	basePath, topPath := filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "top.qcow2")
	final := true
	for i, p := range []string{basePath, topPath} {
		data := r.recs[i].Materialize(s.Files[i])
		final = final && s.Files[i].Durable == len(r.recs[i].Ops())
		if err := os.WriteFile(p, data, 0o644); err != nil {
			return err
		}
		// (h) as found, unless dirty (then the open below rebuilds).
		if !dirtyBit(data) {
			if err := checkImage(p, qemuImg, false, false, false); err != nil {
				return fmt.Errorf("%v: (h) %s as found: %w", s, filepath.Base(p), err)
			}
		}
	}
	// (j): the backing file alone, opened writable first (repairing it).
	baseGot, err := readGuestOpts(basePath, qcow2.Options{})
	if err != nil {
		return fmt.Errorf("%v: (h) the backing file: %w", s, err)
	}
	if n := int64(len(baseGot)); n != int64(len(r.oldBase)) && n != int64(len(r.chain)) {
		return fmt.Errorf("%v: (j) backing file of %d bytes, want %d or %d", s, n, len(r.oldBase), len(r.chain))
	}
	for b, v := range baseGot {
		old := byte(0)
		if b < len(r.oldBase) {
			old = r.oldBase[b]
		}
		if v != old && (b >= len(r.chain) || v != r.chain[b]) {
			return fmt.Errorf("%v: (j) backing file reads %#x at %d: neither its old value %#x nor the committed one", s, v, b, old)
		}
	}
	// (i): the chain, opened writable (repairing a dirty top).
	chainGot, err := readGuestOpts(topPath, qcow2.Options{})
	if err != nil {
		return fmt.Errorf("%v: (h) the top: %w", s, err)
	}
	if i := firstDiff(chainGot, r.chain); i >= 0 {
		return fmt.Errorf("%v: (i) the chain reads %#x at guest offset %d, the guest wrote %#x: committed data lost", s, chainGot[i], i, r.chain[i])
	}
	for _, p := range []string{basePath, topPath} {
		if err := checkImage(p, qemuImg, withQemu, final, false); err != nil {
			return fmt.Errorf("%v: (h) %s: %w", s, filepath.Base(p), err)
		}
	}
	if !final {
		return nil
	}
	// (k)
	if !bytes.Equal(baseGot[:len(r.chain)], r.chain) {
		return fmt.Errorf("%v: (k) after the whole commit the backing file does not read the chain's content", s)
	}
	if r.cfg.drop {
		if len(r.recs[1].Ops()) != 0 {
			return fmt.Errorf("%v: (k) commit with drop wrote to the top: %v", s, r.recs[1].Ops())
		}
		return nil
	}
	return topIsEmpty(topPath)
}

// topIsEmpty reports an error unless the image at path defines nothing.
func topIsEmpty(path string) error {
	img, err := qcow2.Open(path, qcow2.Options{ReadOnly: true, NoBacking: true})
	if err != nil {
		return err
	}
	defer img.Close()
	ext, err := img.Map(0, img.Size())
	if err != nil {
		return err
	}
	for _, e := range ext {
		if e.Present {
			return errors.New("(k) after the whole commit the top still defines " + fmt.Sprint(e))
		}
	}
	return nil
}
