package qcow2_test

// Live external snapshots (Live.Freeze): the frozen layer holds every
// write that returned before the call, the volume every write; every
// on-disk state a crash can leave between the steps opens with the guest's
// data; failures roll back; bad requests change nothing.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/qemutest"
	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// freezeStore is the driver's layout in a temporary root: a golden image
// images/base.qcow2 of random data and a volume volumes/v.qcow2 over it,
// opened under a policy confined to the root.
type freezeStore struct {
	root, vol string
	opts      qcow2.Options
	initial   []byte // the guest content of the fresh volume (the base)
}

func newFreezeStore(t *testing.T, size int64, co qcow2.CreateOptions) *freezeStore {
	t.Helper()
	s := &freezeStore{root: t.TempDir()}
	for _, d := range []string{"images", "volumes", "snapshots"} {
		if err := os.Mkdir(filepath.Join(s.root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	s.opts = qcow2.Options{Backing: qcow2.BackingPolicy{Root: s.root}}
	base := filepath.Join(s.root, "images", "base.qcow2")
	bco := co
	bco.Size = size
	if err := qcow2.Create(base, bco); err != nil {
		t.Fatal(err)
	}
	img, err := qcow2.Open(base, qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s.initial = make([]byte, size)
	rand.New(rand.NewSource(99)).Read(s.initial[:size/2]) // the upper half stays unallocated
	if _, err := img.WriteAt(s.initial[:size/2], 0); err != nil {
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	s.vol = s.path("volumes/v.qcow2")
	vco := co
	vco.BackingFile, vco.BackingFormat, vco.Backing = "../images/base.qcow2", "qcow2", s.opts.Backing
	if err := qcow2.Create(s.vol, vco); err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *freezeStore) path(rel string) string { return filepath.Join(s.root, rel) }

func (s *freezeStore) open(t *testing.T) *qcow2.Live {
	t.Helper()
	l, err := qcow2.OpenLive(s.vol, s.opts)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// readImage reads the guest content of the image at path through its chain.
func (s *freezeStore) readImage(t *testing.T, path string) []byte {
	t.Helper()
	opts := s.opts
	// Force-share: the volume may be open in a live handle (qemu-img -U).
	opts.ReadOnly, opts.ForceShare = true, true
	img, err := qcow2.Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	return snapReadAll(t, img, img.Size())
}

func backingName(t *testing.T, path string) string {
	t.Helper()
	img, err := qcow2.Open(path, qcow2.Options{ReadOnly: true, NoBacking: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	return img.Header().BackingFile
}

// TestFreezeLive (acceptance 5, external): an external snapshot taken
// while 4 goroutines write random data holds every write that returned
// before Freeze was called (and possibly later ones, in order); the volume
// holds every write; qemu-img checks both files clean and compares them
// equal to the model.
func TestFreezeLive(t *testing.T) {
	testtools.Need(t, "qemu-img")
	t.Parallel()
	const workers, region = 4, 1 << 20
	s := newFreezeStore(t, workers*region, qcow2.CreateOptions{ClusterSize: 65536})
	live := s.open(t)
	snap := s.path("snapshots/s1.qcow2")
	lw := newLiveWriters(workers, region, 80)
	lw.run(t, live, func() error { return live.Freeze(snap) })

	frozen := lw.checkSnapshot(t, s.initial, s.readImage(t, snap))
	want := lw.final(s.initial)
	if d := qemutest.DiffBytes(want, snapReadAll(t, live, live.Size()), 0); d != "" {
		t.Errorf("volume read through the live handle: %s", d)
	}
	if got := live.Info().BackingFilename; got != "../snapshots/s1.qcow2" {
		t.Errorf("new overlay's backing file %q, want ../snapshots/s1.qcow2", got)
	}
	if err := live.Close(); err != nil {
		t.Fatal(err)
	}
	if got := backingName(t, snap); got != "../images/base.qcow2" {
		t.Errorf("frozen layer's backing file %q, want ../images/base.qcow2", got)
	}
	for _, p := range []string{s.vol, snap} {
		qemutest.MustCheckClean(t, p, "qcow2")
	}
	qemutest.MustCompare(t, snap, "qcow2", writeTemp(t, frozen), "raw")
	qemutest.MustCompare(t, s.vol, "qcow2", writeTemp(t, want), "raw")
}

// copyTree copies the files under src to dst, keeping hard links: files
// that are one inode in src are one inode in dst.
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	var seen []struct {
		fi   fs.FileInfo
		copy string
	}
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		out := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(out, 0o755)
		}
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		for _, s := range seen {
			if os.SameFile(s.fi, fi) {
				return os.Link(s.copy, out)
			}
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		seen = append(seen, struct {
			fi   fs.FileInfo
			copy string
		}{fi, out})
		return os.WriteFile(out, b, fi.Mode().Perm())
	})
	if err != nil {
		t.Fatal(err)
	}
}

// writeRandom writes n random bytes at off through l and into model.
func writeRandom(t *testing.T, rng *rand.Rand, l io.WriterAt, model []byte, off, n int64) {
	t.Helper()
	p := make([]byte, n)
	rng.Read(p)
	if _, err := l.WriteAt(p, off); err != nil {
		t.Fatal(err)
	}
	copy(model[off:], p)
}

// TestFreezeCrashStates: the files as a crash leaves them after each step
// of a Freeze (each step ends with an fsync, so these are the states a
// power failure can leave too, and a process kill) are, after
// RecoverFreeze, a volume that opens with the guest's data and either no
// snapshot or a complete one; qemu-img checks every file clean, and the
// recovered volume takes writes. Two freezes in a row, so the second
// freezes an overlay whose backing file is the first snapshot.
func TestFreezeCrashStates(t *testing.T) {
	testtools.Need(t, "qemu-img")
	t.Parallel()
	for _, c := range []struct {
		name string
		co   qcow2.CreateOptions
	}{
		{"v3", qcow2.CreateOptions{ClusterSize: 4096}},
		{"v3lazy", qcow2.CreateOptions{ClusterSize: 65536, LazyRefcounts: true}},
		{"v2", qcow2.CreateOptions{ClusterSize: 65536, Compat: "0.10"}},
		{"v3extl2", qcow2.CreateOptions{ClusterSize: 32768, ExtendedL2: true}},
	} {
		t.Run(c.name, func(t *testing.T) {
			const size = 2 << 20
			s := newFreezeStore(t, size, c.co)
			rng := rand.New(rand.NewSource(5))
			model := slices.Clone(s.initial)
			live := s.open(t)
			type state struct {
				dir, step, snap string
				model           []byte
			}
			var states []state
			for i, name := range []string{"s1", "s2"} {
				for range 6 {
					n := 1 + rng.Int63n(200000)
					writeRandom(t, rng, live, model, rng.Int63n(size-n), n)
				}
				// Half of the freezes start with writes not yet flushed.
				if i == 0 {
					if err := live.Flush(); err != nil {
						t.Fatal(err)
					}
				}
				snap := "snapshots/" + name + ".qcow2"
				frozenModel := slices.Clone(model)
				steps := []string{"before"}
				capture := func(step string) error {
					dir := filepath.Join(t.TempDir(), step)
					copyTree(t, s.root, dir)
					states = append(states, state{dir, step, snap, frozenModel})
					return nil
				}
				capture("before")
				qcow2.SetFreezeHook(live, func(step string) error { steps = append(steps, step); return capture(step) })
				if err := live.Freeze(s.path(snap)); err != nil {
					t.Fatal(err)
				}
				if want := []string{"before", "settled", "linked", "created", "renamed"}; !slices.Equal(steps, want) {
					t.Fatalf("freeze steps %v, want %v", steps, want)
				}
				// The new top keeps the volume's format options.
				if ext := live.Header().IncompatibleFeatures&(1<<4) != 0; ext != c.co.ExtendedL2 {
					t.Errorf("the overlay made by Freeze has extended L2 entries: %v, the volume: %v", ext, c.co.ExtendedL2)
				}
			}
			if err := live.Close(); err != nil {
				t.Fatal(err)
			}
			for _, st := range states {
				t.Run(fmt.Sprintf("%s-%s", filepath.Base(st.snap), st.step), func(t *testing.T) {
					checkFreezeState(t, st.dir, st.snap, st.step, st.model)
				})
			}
		})
	}
}

// checkFreezeState recovers one crash state (a copy of the store in dir)
// and checks it. step is the last step done ("before": none, a copy of a
// volume in use, whose leaks and (lazy refcounts) dirty bit are allowed).
func checkFreezeState(t *testing.T, dir, snapRel, step string, model []byte) {
	frozen := step == "renamed"
	cs := &freezeStore{root: dir, vol: filepath.Join(dir, "volumes/v.qcow2"), opts: qcow2.Options{Backing: qcow2.BackingPolicy{Root: dir}}}
	snap := cs.path(snapRel)
	if step == "linked" || step == "created" {
		if _, err := qcow2.OpenLive(cs.vol, cs.opts); !errors.Is(err, qcow2.ErrInvalid) {
			t.Fatalf("OpenLive of a volume with a second name (before RecoverFreeze): %v", err)
		}
	}
	got, err := qcow2.RecoverFreeze(cs.vol, snap)
	if err != nil {
		t.Fatalf("RecoverFreeze: %v", err)
	}
	if got != frozen {
		t.Fatalf("RecoverFreeze says frozen=%v, want %v", got, frozen)
	}
	left, _ := filepath.Glob(filepath.Join(dir, "volumes", ".*"))
	if len(left) > 0 {
		t.Fatalf("temporary files left after recovery: %v", left)
	}
	if _, err := os.Stat(snap); frozen != (err == nil) {
		t.Fatalf("snapshot file after recovery: %v (frozen %v)", err, frozen)
	}
	if d := qemutest.DiffBytes(model, cs.readImage(t, cs.vol), 0); d != "" {
		t.Fatalf("volume: %s", d)
	}
	files := []string{cs.vol}
	if frozen {
		if d := qemutest.DiffBytes(model, cs.readImage(t, snap), 0); d != "" {
			t.Fatalf("frozen layer: %s", d)
		}
		if got, want := backingName(t, cs.vol), "../"+snapRel; got != want {
			t.Fatalf("volume's backing file %q, want %q", got, want)
		}
		files = append(files, snap)
	}
	// The copy of a volume in use may have leaks (reserved clusters) and,
	// with lazy refcounts, the dirty bit: it is checked after an open.
	if step != "before" {
		for _, p := range files {
			qemutest.MustCheckClean(t, p, "qcow2")
		}
	}
	// The recovered volume takes writes and leaves the snapshot alone.
	live := cs.open(t)
	after := slices.Clone(model)
	writeRandom(t, rand.New(rand.NewSource(1)), live, after, 12345, 100000)
	if err := live.Close(); err != nil {
		t.Fatal(err)
	}
	if d := qemutest.DiffBytes(after, cs.readImage(t, cs.vol), 0); d != "" {
		t.Fatalf("volume after a write: %s", d)
	}
	if frozen {
		if d := qemutest.DiffBytes(model, cs.readImage(t, snap), 0); d != "" {
			t.Fatalf("frozen layer after a write to the volume: %s", d)
		}
	}
	if c := qemutest.Check(t, cs.vol, "qcow2", ""); !c.Clean() && (step != "before" || c.ExitCode != 3) {
		t.Fatalf("volume after recovery and a write: %s", c.Output)
	}
}

// TestFreezeFailureRollsBack: a Freeze that fails before the volume is
// switched leaves no snapshot and no temporary file, and the handle goes
// on with the old top; one that fails after it stays switched.
func TestFreezeFailureRollsBack(t *testing.T) {
	testtools.Need(t, "qemu-img")
	t.Parallel()
	const size = 1 << 20
	s := newFreezeStore(t, size, qcow2.CreateOptions{ClusterSize: 4096})
	live := s.open(t)
	model := slices.Clone(s.initial)
	rng := rand.New(rand.NewSource(3))
	boom := errors.New("injected failure")
	for i, step := range []string{"settled", "linked", "created", "renamed"} {
		writeRandom(t, rng, live, model, rng.Int63n(size-5000), 5000)
		snap := s.path(fmt.Sprintf("snapshots/s%d.qcow2", i))
		qcow2.SetFreezeHook(live, func(got string) error {
			if got == step {
				return boom
			}
			return nil
		})
		err := live.Freeze(snap)
		if !errors.Is(err, boom) {
			t.Fatalf("failure at %s: Freeze returned %v", step, err)
		}
		_, serr := os.Stat(snap)
		if switched := step == "renamed"; switched != (serr == nil) {
			t.Fatalf("failure at %s: snapshot file: %v", step, serr)
		}
		if left, _ := filepath.Glob(s.path("volumes/.*")); len(left) > 0 {
			t.Fatalf("failure at %s: temporary files left: %v", step, left)
		}
		writeRandom(t, rng, live, model, rng.Int63n(size-5000), 5000)
		if d := qemutest.DiffBytes(model, snapReadAll(t, live, size), 0); d != "" {
			t.Fatalf("failure at %s: live handle: %s", step, d)
		}
	}
	qcow2.SetFreezeHook(live, nil)
	if err := live.Freeze(s.path("snapshots/ok.qcow2")); err != nil {
		t.Fatal(err)
	}
	if err := live.Close(); err != nil {
		t.Fatal(err)
	}
	if d := qemutest.DiffBytes(model, s.readImage(t, s.vol), 0); d != "" {
		t.Fatalf("volume: %s", d)
	}
	for _, p := range []string{s.vol, s.path("snapshots/s3.qcow2"), s.path("snapshots/ok.qcow2")} {
		qemutest.MustCheckClean(t, p, "qcow2")
	}
}

// TestFreezeRefuses: requests that cannot be served get a clear error and
// change nothing.
func TestFreezeRefuses(t *testing.T) {
	t.Parallel()
	s := newFreezeStore(t, 1<<20, qcow2.CreateOptions{ClusterSize: 4096})
	live := s.open(t)
	defer live.Close()
	taken := s.path("snapshots/taken.qcow2")
	if err := os.WriteFile(taken, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	outside := filepath.Join(t.TempDir(), "s.qcow2")
	for _, c := range []struct {
		path string
		want error
	}{
		{taken, fs.ErrExist},
		{outside, qcow2.ErrPolicy},
		{s.vol, qcow2.ErrInvalid},
		{s.path("volumes/nbd:x.qcow2"), qcow2.ErrPolicy},
		// From there, the top's backing name ../images/base.qcow2 would
		// name snapshots/images/base.qcow2.
		{s.path("snapshots/deeper/s.qcow2"), qcow2.ErrInvalid},
	} {
		err := live.Freeze(c.path)
		if !errors.Is(err, c.want) {
			t.Errorf("Freeze(%s) = %v, want %v", c.path, err, c.want)
		}
	}
	entries, _ := filepath.Glob(filepath.Join(s.root, "*", "*"))
	want := []string{s.path("images/base.qcow2"), taken, s.vol}
	if !slices.Equal(entries, want) {
		t.Errorf("files after refused freezes: %v, want %v", entries, want)
	}
	if b, _ := os.ReadFile(taken); !bytes.Equal(b, []byte("x")) {
		t.Error("an existing snapshot file was changed")
	}
	if _, err := live.WriteAt([]byte("still writable"), 0); err != nil {
		t.Fatal(err)
	}
}

// TestLiveHandle: the handle's own methods follow the current top across
// a Freeze and refuse use after Close.
func TestLiveHandle(t *testing.T) {
	t.Parallel()
	s := newFreezeStore(t, 1<<20, qcow2.CreateOptions{ClusterSize: 4096, Compat: "0.10"})
	live := s.open(t)
	if _, err := qcow2.OpenLive(s.vol, qcow2.Options{Backing: s.opts.Backing, ReadOnly: true}); !errors.Is(err, qcow2.ErrInvalid) {
		t.Errorf("OpenLive read-only: %v", err)
	}
	if err := live.Freeze(s.path("snapshots/a.qcow2")); err != nil {
		t.Fatal(err)
	}
	if live.ClusterSize() != 4096 || live.Header().Version != 2 || live.ReadOnly() || live.Size() != 1<<20 {
		t.Errorf("after a freeze: cluster size %d, version %d, read-only %v, size %d",
			live.ClusterSize(), live.Header().Version, live.ReadOnly(), live.Size())
	}
	if err := live.WriteZeroes(0, 8192, true); err != nil {
		t.Fatal(err)
	}
	if err := live.Discard(8192, 4096); err != nil {
		t.Fatal(err)
	}
	// Version 2 stores the zeros as data over a backing file.
	ext, err := live.Map(0, 1<<20)
	if err != nil || len(ext) == 0 || ext[0].Depth != 0 || ext[0].Length != 8192 {
		t.Errorf("Map after zeroing: %v, %v", ext, err)
	}
	if got := snapReadAll(t, live, 8192); !bytes.Equal(got, make([]byte, 8192)) {
		t.Error("zeroed range does not read as zeros")
	}
	if err := live.WithImage(func(img *qcow2.Image) error { _, err := img.CreateSnapshot("internal"); return err }); err != nil {
		t.Fatal(err)
	}
	if err := live.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := live.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := live.WriteAt([]byte{1}, 0); !errors.Is(err, qcow2.ErrClosed) {
		t.Errorf("write after Close: %v", err)
	}
	if err := live.Freeze(s.path("snapshots/b.qcow2")); !errors.Is(err, qcow2.ErrClosed) {
		t.Errorf("Freeze after Close: %v", err)
	}
	if !live.ReadOnly() || live.Size() != 0 || live.Close() == nil {
		t.Error("a closed handle still reports a usable top")
	}
}
