package qcow2_test

// Crash states of img rebase. The header rewrite must never tear into a
// header that is neither the old one nor the new one (a disk persists a
// write one sector at a time), so every crash state must open, name the
// old or the new backing file, check clean (leaks allowed) and read what
// the old chain read or, for an unsafe rebase, what the new chain reads.
// A safe rebase copies data first, so there every state reads the old
// content.

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/crashsim"
	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

type rebaseCrashCase struct {
	name            string
	cs              int64
	compat          string
	qemuCreated     bool // the top image comes from qemu-img create (its own extension layout)
	bitmap          bool // qemu-img bitmap --add: a bitmaps extension after the feature table
	from, fromFmt   string
	to, toFmt       string
	unsafe          bool
	wantIntermedate bool // the switch needs the compact intermediate header
}

func TestCrashStatesRebase(t *testing.T) {
	qemuImg := testtools.Need(t, "qemu-img")[0]
	long := "a-much-longer-name-for-the-new-backing-file-of-this-image.raw"
	for _, c := range []rebaseCrashCase{
		{name: "unsafe-rename", cs: 4096, compat: "1.1", from: "a.raw", fromFmt: "raw", to: long, toFmt: "raw", unsafe: true},
		{name: "unsafe-format", cs: 4096, compat: "1.1", from: "a.raw", fromFmt: "raw", to: "b.qcow2", toFmt: "qcow2", unsafe: true},
		{name: "unsafe-format-same-name", cs: 4096, compat: "1.1", from: "b.qcow2", fromFmt: "qcow2", to: "b.qcow2", toFmt: "raw", unsafe: true},
		{name: "unsafe-remove", cs: 4096, compat: "1.1", from: "a.raw", fromFmt: "raw", unsafe: true},
		{name: "unsafe-add", cs: 4096, compat: "1.1", to: "b.qcow2", toFmt: "qcow2", unsafe: true},
		{name: "unsafe-v2", cs: 4096, compat: "0.10", from: "a.raw", fromFmt: "raw", to: "b.qcow2", toFmt: "qcow2", unsafe: true},
		{name: "unsafe-c512", cs: 512, compat: "1.1", from: "a.raw", fromFmt: "raw", to: long, toFmt: "raw", unsafe: true},
		{name: "unsafe-qemu-remove", cs: 65536, compat: "1.1", qemuCreated: true, from: "a.raw", fromFmt: "raw", unsafe: true},
		{name: "unsafe-qemu-bitmap-format", cs: 65536, compat: "1.1", qemuCreated: true, bitmap: true, from: "a.raw", fromFmt: "raw", to: "b.qcow2", toFmt: "qcow2", unsafe: true, wantIntermedate: true},
		{name: "safe-qemu-bitmap-remove", cs: 65536, compat: "1.1", qemuCreated: true, bitmap: true, from: "a.raw", fromFmt: "raw", wantIntermedate: true},
		{name: "safe", cs: 4096, compat: "1.1", from: "a.raw", fromFmt: "raw", to: "b.qcow2", toFmt: "qcow2"},
		{name: "safe-remove", cs: 4096, compat: "1.1", from: "a.raw", fromFmt: "raw"},
	} {
		t.Run(c.name, func(t *testing.T) { runRebaseCrash(t, qemuImg, c) })
	}
}

func runRebaseCrash(t *testing.T, qemuImg string, c rebaseCrashCase) {
	cs := c.cs
	size := crashTopClusters * cs
	dir := crashTempDir(t)
	makeRebaseBackings(t, dir, qemuImg, size)
	name := filepath.Join(dir, "top.qcow2")
	r := newCrashTop(t, qemuImg, dir, c)
	oldContent := writeCrashTop(t, r, name, cs, size, c.compat == "1.1")
	newContent := oldContent
	if c.unsafe {
		newContent = qemuRebasedContent(t, qemuImg, dir, r.Bytes(), c)
	}

	rec := recordOp(t, r, name, qcow2.Options{NoBacking: c.unsafe}, func(img *qcow2.Image) error {
		if err := img.Rebase(c.to, c.toFmt, c.unsafe, qcow2.BackingPolicy{}); err != nil {
			return fmt.Errorf("Rebase: %w", err)
		}
		return nil
	})
	states := rec.States(crashsim.Plan{Seed: 11, ReorderedPerEpoch: 24, Prefixes: 12})
	states = pickStates(states, 80, 11)
	var all []fmt.Stringer
	var bufs [][]byte
	for _, s := range states {
		all, bufs = append(all, s), append(bufs, rec.Materialize(s))
	}
	// Sampled reordered states rarely tear the one header write the
	// right way; tear every write into cluster 0 every way that matters.
	for _, tr := range headerTears(rec, cs) {
		all, bufs = append(all, tr), append(bufs, tr.buf)
	}
	sawNew, sawCompact := false, false
	oldNames := -1
	for i, s := range all {
		h, err := checkRebaseState(dir, s, bufs[i], c, oldContent, newContent, qemuImg, i%8 == 0)
		if err != nil {
			t.Errorf("%v", err)
			continue
		}
		if oldNames < 0 {
			oldNames = len(h.FeatureNames) // the first state is the image before the rebase
		}
		sawNew = sawNew || h.BackingFile == c.to && h.BackingFormat == c.toFmt
		sawCompact = sawCompact || oldNames > 0 && len(h.FeatureNames) == 0
	}
	if sawCompact != c.wantIntermedate {
		t.Errorf("a crash state with the compact header (no feature name table): %v, want %v", sawCompact, c.wantIntermedate)
	}
	final := rec.Materialize(states[len(states)-1])
	if !sawNew || !bytes.Equal(final, r.Bytes()) {
		t.Errorf("the final state is not the rebased image (saw new header: %v)", sawNew)
	}
	if _, err := checkRebaseState(dir, states[len(states)-1], final, c, oldContent, newContent, qemuImg, true); err != nil {
		t.Errorf("final state: %v", err)
	}
	t.Logf("%d operations, %d crash states checked", len(rec.Ops()), len(all))
}

// crashTopClusters is the virtual size, in clusters, of the images these
// tests rewrite: room for writeCrashTop's clusters, small enough to check
// every state quickly.
const crashTopClusters = 16

// newCrashTop creates top.qcow2 in dir on a Recorder, with the engine or
// qemu-img as c says, backed by c.from if set.
func newCrashTop(t *testing.T, qemuImg, dir string, c rebaseCrashCase) *crashsim.Recorder {
	name := filepath.Join(dir, "top.qcow2")
	size := crashTopClusters * c.cs
	if !c.qemuCreated {
		r := crashsim.NewRecorder(nil)
		opts := qcow2.CreateOptions{Size: size, ClusterSize: c.cs, Compat: c.compat, BackingFile: c.from, BackingFormat: c.fromFmt}
		if err := qcow2.CreateFile(r, name, opts); err != nil {
			t.Fatal(err)
		}
		r.Reopen()
		return r
	}
	args := []string{"create", "-q", "-f", "qcow2", "-o", fmt.Sprintf("cluster_size=%d,compat=%s", c.cs, c.compat)}
	if c.from != "" {
		args = append(args, "-b", c.from, "-F", c.fromFmt)
	}
	runQemuImg(t, qemuImg, append(args, name, fmt.Sprint(size))...)
	if c.bitmap {
		runQemuImg(t, qemuImg, "bitmap", "--add", name, "b0")
	}
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return crashsim.NewRecorder(data)
}

// writeCrashTop writes own data into a few clusters of the image on r
// (and a zero cluster if zero), and returns what the image then reads.
func writeCrashTop(t *testing.T, r *crashsim.Recorder, name string, cs, size int64, zero bool) []byte {
	img, err := qcow2.OpenFile(r, name, qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i, off := range []int64{0, 5 * cs, 17 * cs / 2, size - 2*cs} {
		p := make([]byte, cs)
		for b := range p {
			p[b] = tag(1+i, off+int64(b))
		}
		if _, err := img.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
	}
	if zero {
		if err := img.WriteZeroes(12*cs, 2*cs, false); err != nil {
			t.Fatal(err)
		}
	}
	content := make([]byte, size)
	if _, err := img.ReadAt(content, 0); err != nil {
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	return content
}

// makeRebaseBackings writes a.raw (the old backing file) and b.qcow2 (the
// new one: other content in part, unallocated elsewhere).
func makeRebaseBackings(t *testing.T, dir, qemuImg string, size int64) {
	a := make([]byte, size)
	for b := range a {
		a[b] = tag(7, int64(b))
	}
	if err := os.WriteFile(filepath.Join(dir, "a.raw"), a, 0o444); err != nil {
		t.Fatal(err)
	}
	long := filepath.Join(dir, "a-much-longer-name-for-the-new-backing-file-of-this-image.raw")
	if err := os.WriteFile(long, a[:size/2], 0o444); err != nil {
		t.Fatal(err)
	}
	bRaw := filepath.Join(dir, "b.raw")
	b := make([]byte, size)
	for i := range b[:size/2] {
		b[i] = tag(8, int64(i))
	}
	copy(b[size*3/4:], a[size*3/4:])
	if err := os.WriteFile(bRaw, b, 0o644); err != nil {
		t.Fatal(err)
	}
	runQemuImg(t, qemuImg, "convert", "-q", "-f", "raw", "-O", "qcow2", bRaw, filepath.Join(dir, "b.qcow2"))
}

// qemuRebasedContent is what the image in data reads after qemu-img
// rebase -u does the same change: the reference for the new chain.
func qemuRebasedContent(t *testing.T, qemuImg, dir string, data []byte, c rebaseCrashCase) []byte {
	path := filepath.Join(dir, "reference.qcow2")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(path)
	args := []string{"rebase", "-u", "-b", c.to}
	if c.to != "" {
		args = append(args, "-F", c.toFmt)
	}
	runQemuImg(t, qemuImg, append(args, path)...)
	got, err := readGuest(path)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func runQemuImg(t *testing.T, qemuImg string, args ...string) {
	t.Helper()
	if out, err := exec.Command(qemuImg, args...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img %v: %v\n%s", args, err, out)
	}
}

// checkRebaseState checks one crash state: it names the old or the new
// backing file and reads what that chain should read.
func checkRebaseState(dir string, s fmt.Stringer, buf []byte, c rebaseCrashCase, oldContent, newContent []byte, qemuImg string, withQemu bool) (qcow2.Header, error) {
	h, got, err := openCrashState(dir, s, buf, qemuImg, withQemu)
	if err != nil {
		return h, err
	}
	want := oldContent
	switch {
	case h.BackingFile == c.to && h.BackingFormat == c.toFmt:
		want = newContent
	case h.BackingFile != c.from || h.BackingFormat != c.fromFmt:
		return h, fmt.Errorf("%v: backing file %q (%q) is neither the old %q (%q) nor the new %q (%q)", s, h.BackingFile, h.BackingFormat, c.from, c.fromFmt, c.to, c.toFmt)
	}
	if !bytes.Equal(got, want) {
		return h, fmt.Errorf("%v: backing file %q: guest content differs at byte %d", s, h.BackingFile, firstDiff(got, want))
	}
	return h, nil
}

// recordOp reopens the recorder, runs op on the image opened with opts and
// closes it, and returns the recording of just that: the crash states of
// one operation on an image that was durable before it.
func recordOp(t *testing.T, r *crashsim.Recorder, name string, opts qcow2.Options, op func(*qcow2.Image) error) *crashsim.Recording {
	t.Helper()
	r.Reopen()
	from := r.Len()
	img, err := qcow2.OpenFile(r, name, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := op(img); err != nil {
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	return r.Recording().Since(from)
}
