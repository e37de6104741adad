package qcow2_test

// Internal snapshots against QEMU: snapshots qemu-img made are listed,
// read and applied by the engine; snapshots the engine made are listed,
// applied and deleted by qemu-img; `qemu-img check` is clean after every
// step.

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/csi-qcow2/csi-qcow2/internal/qemutest"
	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// snapModel is an open engine image plus the guest content it must have.
type snapModel struct {
	t    *testing.T
	path string
	img  *qcow2.Image
	ref  []byte
}

func snapOpen(t *testing.T, path string) *snapModel {
	t.Helper()
	img, err := qcow2.Open(path, qcow2.Options{Backing: qcow2.BackingPolicy{AllowAnyPath: true}})
	if err != nil {
		t.Fatal(err)
	}
	m := &snapModel{t: t, path: path, img: img}
	m.ref = snapReadAll(t, img, img.Size())
	return m
}

func snapReadAll(t *testing.T, r interface {
	ReadAt([]byte, int64) (int, error)
}, size int64) []byte {
	t.Helper()
	b := make([]byte, size)
	if _, err := r.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

// write writes n random bytes at off to the image and the model.
func (m *snapModel) write(rng *rand.Rand, off, n int64) {
	m.t.Helper()
	p := make([]byte, n)
	rng.Read(p)
	if _, err := m.img.WriteAt(p, off); err != nil {
		m.t.Fatalf("write %d+%d: %v", off, n, err)
	}
	copy(m.ref[off:], p)
}

// randomWrites does k writes of random length (partial clusters included).
func (m *snapModel) randomWrites(rng *rand.Rand, k int) {
	size := int64(len(m.ref))
	for range k {
		n := 1 + rng.Int63n(min(size, 3*65536))
		m.write(rng, rng.Int63n(size-n+1), n)
	}
}

func (m *snapModel) verify(what string) {
	m.t.Helper()
	got := snapReadAll(m.t, m.img, m.img.Size())
	if d := qemutest.DiffBytes(m.ref, got, 0); d != "" {
		m.t.Fatalf("%s: active layer: %s", what, d)
	}
}

// closeCheck closes the image and runs qemu-img check on it.
func (m *snapModel) closeCheck(what string) {
	m.t.Helper()
	if err := m.img.Close(); err != nil {
		m.t.Fatalf("%s: close: %v", what, err)
	}
	m.img = nil
	if c := qemutest.Check(m.t, m.path, "qcow2", ""); !c.Clean() {
		m.t.Fatalf("%s: qemu-img check is not clean: %s", what, c.Output)
	}
}

func (m *snapModel) reopen() {
	m.t.Helper()
	img, err := qcow2.Open(m.path, qcow2.Options{Backing: qcow2.BackingPolicy{AllowAnyPath: true}})
	if err != nil {
		m.t.Fatal(err)
	}
	m.img = img
}

// mustView checks the engine's view of a snapshot against want.
func mustView(t *testing.T, img *qcow2.Image, idOrName string, want []byte) {
	t.Helper()
	v, err := img.OpenSnapshot(idOrName)
	if err != nil {
		t.Fatalf("OpenSnapshot(%q): %v", idOrName, err)
	}
	if v.Size() != int64(len(want)) {
		t.Fatalf("snapshot %q: size %d, want %d", idOrName, v.Size(), len(want))
	}
	// Odd-sized reads cross cluster boundaries.
	qemutest.MustReaderAtEqual(t, want, v, 12345)
}

// mustQemuSnapshot checks qemu-img's view of a snapshot against want.
func mustQemuSnapshot(t *testing.T, path, name string, want []byte) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "snap.raw")
	qemutest.ConvertSnapshotToRaw(t, path, name, out)
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	// qemu-img reads a snapshot at the image's current size.
	n := min(len(want), len(got))
	if d := qemutest.DiffBytes(want[:n], got[:n], 0); d != "" {
		t.Fatalf("qemu-img reads snapshot %q: %s", name, d)
	}
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

type snapConfig struct {
	name    string
	opts    qemutest.ImageOptions
	backing bool
	compr   bool
}

func snapConfigs() []snapConfig {
	return []snapConfig{
		{name: "4k-backing-compressed", opts: qemutest.ImageOptions{ClusterSize: 4096}, backing: true, compr: true},
		{name: "64k-v2", opts: qemutest.ImageOptions{ClusterSize: 65536, Compat: "0.10"}},
		{name: "64k-lazy-rc8", opts: qemutest.ImageOptions{ClusterSize: 65536, LazyRefcounts: true, RefcountBits: 8}},
	}
}

// TestSnapshotQemuMade: snapshots qemu-img took (one of them before a
// resize) are listed, read byte-exact, applied and deleted by the engine.
func TestSnapshotQemuMade(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	t.Parallel()
	for _, cfg := range snapConfigs() {
		t.Run(cfg.name, func(t *testing.T) {
			t.Parallel()
			rng := rand.New(rand.NewSource(int64(len(cfg.name))))
			dir := t.TempDir()
			path := filepath.Join(dir, "img.qcow2")
			const size1 = 1 << 20
			size2 := int64(3 << 19)
			if cfg.opts.Compat == "0.10" {
				size2 = size1 // qemu cannot resize a v2 image with snapshots
			}
			o := cfg.opts
			o.Size = size1
			if cfg.backing {
				base := filepath.Join(dir, "base.raw")
				qemutest.CreateRaw(t, base, 2<<20)
				qemutest.QemuIO(t, base, "raw", qemutest.Write(0, 2<<20, 0x5a))
				o.BackingFile, o.BackingFormat = "base.raw", "raw"
			}
			qemutest.CreateImage(t, path, o)
			cs := max(o.ClusterSize, 512)
			var ops []qemutest.Op
			for range 12 {
				n := 1 + rng.Int63n(100000)
				ops = append(ops, qemutest.Write(rng.Int63n(size1-n), n, byte(1+rng.Intn(250))))
			}
			qemutest.QemuIO(t, path, "qcow2", ops...)
			if cfg.compr {
				qemutest.QemuIOCommands(t, path, "qcow2", fmt.Sprintf("write -c -P 0x77 %d %d", 4*cs, cs))
			}
			qemutest.CreateSnapshot(t, path, "s1")
			s1 := qemutest.ReadGuest(t, path, "qcow2")
			qemutest.QemuIO(t, path, "qcow2", qemutest.Write(1000, 70000, 0x42), qemutest.Zero(300000, 2*cs))
			if size2 != size1 {
				qemutest.Run(t, "qemu-img", "resize", path, fmt.Sprint(size2))
			}
			qemutest.QemuIO(t, path, "qcow2", qemutest.Write(size1-10000, 5000, 0x43))
			qemutest.CreateSnapshot(t, path, "s2")
			s2 := qemutest.ReadGuest(t, path, "qcow2")
			qemutest.QemuIO(t, path, "qcow2", qemutest.Write(0, 200000, 0x44))

			m := snapOpen(t, path)
			snaps, err := m.img.Snapshots()
			if err != nil {
				t.Fatal(err)
			}
			if len(snaps) != 2 || snaps[0].ID != "1" || snaps[0].Name != "s1" || snaps[1].ID != "2" || snaps[1].Name != "s2" ||
				snaps[0].DiskSize != size1 || snaps[1].DiskSize != size2 || time.Since(snaps[0].Date) > time.Hour {
				t.Fatalf("Snapshots() = %+v", snaps)
			}
			mustView(t, m.img, "s1", s1)
			mustView(t, m.img, "2", s2)

			// Apply s1: the size goes back too.
			if err := m.img.ApplySnapshot("s1"); err != nil {
				t.Fatal(err)
			}
			if m.img.Size() != size1 {
				t.Fatalf("size %d after apply, want %d", m.img.Size(), size1)
			}
			m.ref = bytes.Clone(s1)
			m.verify("after apply s1")
			m.closeCheck("apply s1")
			qemutest.MustCompare(t, path, "qcow2", writeTemp(t, s1), "raw")
			mustQemuSnapshot(t, path, "s2", s2)

			// Writes after the apply copy what they share with s1.
			m.reopen()
			m.randomWrites(rng, 20)
			m.verify("writes after apply")
			mustView(t, m.img, "s1", s1)
			m.closeCheck("writes after apply")
			mustQemuSnapshot(t, path, "s1", s1)

			// An engine snapshot of this tree (compressed clusters too),
			// deleted by qemu-img.
			m.reopen()
			if _, err := m.img.CreateSnapshot("s3"); err != nil {
				t.Fatal(err)
			}
			s3 := bytes.Clone(m.ref)
			m.randomWrites(rng, 5)
			m.closeCheck("engine snapshot s3")
			mustQemuSnapshot(t, path, "s3", s3)
			qemutest.Run(t, "qemu-img", "snapshot", "-d", "s3", path)
			qemutest.MustCheckClean(t, path, "qcow2")

			m.reopen()
			if err := m.img.DeleteSnapshot("s2"); err != nil {
				t.Fatal(err)
			}
			m.closeCheck("delete s2")
			m.reopen()
			if err := m.img.DeleteSnapshot("1"); err != nil {
				t.Fatal(err)
			}
			m.verify("after deleting every snapshot")
			m.closeCheck("delete s1")
			if out := qemutest.Run(t, "qemu-img", "snapshot", "-l", path); len(out) != 0 {
				t.Fatalf("qemu-img still lists snapshots:\n%s", out)
			}
			qemutest.MustCompare(t, path, "qcow2", writeTemp(t, m.ref), "raw")
		})
	}
}

func writeTemp(t *testing.T, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ref.raw")
	writeFile(t, p, b)
	return p
}

// TestSnapshotEngineMade: snapshots the engine takes are listed, read,
// applied and deleted by qemu-img; writes after a snapshot leave it as it
// was.
func TestSnapshotEngineMade(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	t.Parallel()
	for _, c := range []struct {
		cs     int64
		compat string
	}{{4096, "1.1"}, {65536, "1.1"}, {65536, "0.10"}} {
		cs := c.cs
		t.Run(fmt.Sprint(cs, "-", c.compat), func(t *testing.T) {
			t.Parallel()
			rng := rand.New(rand.NewSource(cs))
			path := filepath.Join(t.TempDir(), "img.qcow2")
			if err := qcow2.Create(path, qcow2.CreateOptions{Size: 2 << 20, ClusterSize: cs, Compat: c.compat}); err != nil {
				t.Fatal(err)
			}
			m := snapOpen(t, path)
			m.randomWrites(rng, 15)
			a, err := m.img.CreateSnapshot("a")
			if err != nil {
				t.Fatal(err)
			}
			if a.ID != "1" || a.Name != "a" || a.DiskSize != 2<<20 {
				t.Fatalf("CreateSnapshot = %+v", a)
			}
			refA := bytes.Clone(m.ref)
			m.randomWrites(rng, 15)
			m.verify("writes after a")
			mustView(t, m.img, "a", refA)
			b, err := m.img.CreateSnapshot("b")
			if err != nil || b.ID != "2" {
				t.Fatalf("CreateSnapshot(b) = %+v, %v", b, err)
			}
			refB := bytes.Clone(m.ref)
			if c.compat != "0.10" { // qemu cannot apply across a resize of a v2 image
				if err := m.img.Resize(3 << 20); err != nil {
					t.Fatal(err)
				}
				m.ref = append(m.ref, make([]byte, 1<<20)...)
			}
			m.randomWrites(rng, 10)
			m.verify("writes after b")
			mustView(t, m.img, "a", refA)
			mustView(t, m.img, "b", refB)
			m.closeCheck("engine snapshots")

			list := string(qemutest.Run(t, "qemu-img", "snapshot", "-l", path))
			if !strings.Contains(list, "\n1         a  ") || !strings.Contains(list, "\n2         b  ") {
				t.Fatalf("qemu-img snapshot -l:\n%s", list)
			}
			mustQemuSnapshot(t, path, "a", refA)
			mustQemuSnapshot(t, path, "b", refB)

			qemutest.Run(t, "qemu-img", "snapshot", "-a", "a", path)
			qemutest.MustCheckClean(t, path, "qcow2")
			qemutest.MustCompare(t, path, "qcow2", writeTemp(t, refA), "raw")
			qemutest.Run(t, "qemu-img", "snapshot", "-d", "b", path)
			qemutest.MustCheckClean(t, path, "qcow2")
			qemutest.Run(t, "qemu-img", "snapshot", "-d", "a", path)
			qemutest.MustCheckClean(t, path, "qcow2")
			qemutest.MustCompare(t, path, "qcow2", writeTemp(t, refA), "raw")

			// The engine keeps working on what qemu left.
			m = snapOpen(t, path)
			if snaps, err := m.img.Snapshots(); err != nil || len(snaps) != 0 {
				t.Fatalf("Snapshots() = %v, %v", snaps, err)
			}
			m.randomWrites(rng, 5)
			c, err := m.img.CreateSnapshot("c")
			if err != nil || c.ID != "1" {
				t.Fatalf("CreateSnapshot(c) = %+v, %v", c, err)
			}
			m.closeCheck("snapshot c")
		})
	}
}

// TestSnapshotEngineCycle: create, write, apply and delete through the
// engine only, with qemu-img check after every step (no Flush in between
// the operations: each must leave the image consistent by itself).
func TestSnapshotEngineCycle(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	t.Parallel()
	rng := rand.New(rand.NewSource(7))
	path := filepath.Join(t.TempDir(), "img.qcow2")
	if err := qcow2.Create(path, qcow2.CreateOptions{Size: 1 << 20, ClusterSize: 4096, LazyRefcounts: true}); err != nil {
		t.Fatal(err)
	}
	m := snapOpen(t, path)
	refs := map[string][]byte{}
	for i, name := range []string{"x", "y", "z"} {
		m.randomWrites(rng, 8)
		if _, err := m.img.CreateSnapshot(name); err != nil {
			t.Fatal(err)
		}
		refs[name] = bytes.Clone(m.ref)
		m.closeCheck(fmt.Sprint("create ", name))
		m.reopen()
		if i == 1 {
			if err := m.img.ApplySnapshot("x"); err != nil {
				t.Fatal(err)
			}
			m.ref = bytes.Clone(refs["x"])
			m.verify("apply x")
			// Apply, write, apply again, delete: all in one session.
			m.randomWrites(rng, 4)
			if err := m.img.ApplySnapshot("y"); err != nil {
				t.Fatal(err)
			}
			m.ref = bytes.Clone(refs["y"])
			if err := m.img.DeleteSnapshot("y"); err != nil {
				t.Fatal(err)
			}
			delete(refs, "y")
			m.verify("apply y, delete y")
			m.closeCheck("apply y, delete y")
			m.reopen()
		}
	}
	for name, want := range refs {
		mustView(t, m.img, name, want)
	}
	for _, name := range []string{"z", "x"} {
		if err := m.img.DeleteSnapshot(name); err != nil {
			t.Fatal(err)
		}
		m.randomWrites(rng, 3)
		m.closeCheck("delete " + name)
		m.reopen()
	}
	m.verify("end")
	m.closeCheck("end")
}

// TestSnapshotErrors: refused operations change nothing.
func TestSnapshotErrors(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	t.Parallel()
	dir := t.TempDir()

	// 1-bit refcounts cannot count a second reference.
	one := filepath.Join(dir, "rc1.qcow2")
	qemutest.CreateImage(t, one, qemutest.ImageOptions{Size: 1 << 20, RefcountBits: 1})
	qemutest.QemuIO(t, one, "qcow2", qemutest.Write(0, 100000, 9))
	before, err := os.ReadFile(one)
	if err != nil {
		t.Fatal(err)
	}
	img, err := qcow2.Open(one, qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := img.CreateSnapshot("s"); !errors.Is(err, qcow2.ErrUnsupported) || !strings.Contains(err.Error(), "refcount") {
		t.Errorf("CreateSnapshot with 1-bit refcounts: %v", err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	after, err := os.ReadFile(one)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Errorf("a refused snapshot changed the file")
	}
	qemutest.MustCheckClean(t, one, "qcow2")

	path := filepath.Join(dir, "img.qcow2")
	qemutest.CreateImage(t, path, qemutest.ImageOptions{Size: 1 << 20})
	m := snapOpen(t, path)
	if _, err := m.img.CreateSnapshot("s"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.img.CreateSnapshot("s"); !errors.Is(err, qcow2.ErrSnapshotExists) {
		t.Errorf("duplicate name: %v", err)
	}
	for _, f := range []func() error{
		func() error { return m.img.ApplySnapshot("nope") },
		func() error { return m.img.DeleteSnapshot("nope") },
		func() error { _, err := m.img.OpenSnapshot("nope"); return err },
	} {
		if err := f(); !errors.Is(err, qcow2.ErrSnapshotNotFound) {
			t.Errorf("unknown snapshot: %v", err)
		}
	}
	v, err := m.img.OpenSnapshot("s")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.img.DeleteSnapshot("s"); err != nil {
		t.Fatal(err)
	}
	if _, err := v.ReadAt(make([]byte, 10), 0); !errors.Is(err, qcow2.ErrSnapshotNotFound) {
		t.Errorf("read of a deleted snapshot: %v", err)
	}
	m.closeCheck("errors")

	ro, err := qcow2.Open(path, qcow2.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if _, err := ro.CreateSnapshot("r"); !errors.Is(err, qcow2.ErrReadOnly) {
		t.Errorf("snapshot of a read-only image: %v", err)
	}
}

// TestSnapshotLive: a snapshot taken while 4 goroutines write random data
// holds every write that returned before CreateSnapshot was called (and
// possibly later ones, in order), and the live image holds every write.
func TestSnapshotLive(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	t.Parallel()
	const workers, region = 4, 1 << 20
	path := filepath.Join(t.TempDir(), "live.qcow2")
	if err := qcow2.Create(path, qcow2.CreateOptions{Size: workers * region, ClusterSize: 65536}); err != nil {
		t.Fatal(err)
	}
	img, err := qcow2.Open(path, qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	lw := newLiveWriters(workers, region, 80)
	lw.run(t, img, func() error { _, err := img.CreateSnapshot("live"); return err })
	v, err := img.OpenSnapshot("live")
	if err != nil {
		t.Fatal(err)
	}
	zeros := make([]byte, workers*region)
	snap := snapReadAll(t, v, v.Size())
	lw.checkSnapshot(t, zeros, snap)
	live := snapReadAll(t, img, img.Size())
	if d := qemutest.DiffBytes(lw.final(zeros), live, 0); d != "" {
		t.Errorf("live image: %s", d)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	qemutest.MustCheckClean(t, path, "qcow2")
	mustQemuSnapshot(t, path, "live", snap)
	qemutest.MustCompare(t, path, "qcow2", writeTemp(t, live), "raw")
}
