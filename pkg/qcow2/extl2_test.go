package qcow2_test

// Extended L2 entries (subclusters): qemu-made images read byte-exact,
// engine-written ones check clean and compare equal in qemu-img, and a
// small write over a backing file allocates only the subclusters it
// touches.

import (
	"bytes"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/qemutest"
	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// iopExtMatrix: extended L2 images at the smallest cluster size QEMU
// allows (16K: 512 B subclusters), the default (64K) and the largest (2M).
func iopExtMatrix() []iopConfig {
	return []iopConfig{
		{compat: "1.1", cluster: 16 << 10, rbits: 16, ext: true},
		{compat: "1.1", cluster: 64 << 10, rbits: 1, lazy: true, ext: true},
		{compat: "1.1", cluster: 2 << 20, rbits: 64, ext: true},
	}
}

// TestInteropExtendedL2 runs the interop chains on extended L2 images:
// qemu-made chains read through the engine (and Map against qemu-img
// map), engine-made chains and engine writes into qemu-made ones checked
// and compared by qemu-img.
func TestInteropExtendedL2(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	t.Parallel()
	for _, cfg := range iopExtMatrix() {
		t.Run(cfg.String()+"/read", func(t *testing.T) {
			t.Parallel()
			iopReadChain(t, cfg, "qcow2", iopSeed(t.Name()))
		})
		t.Run(cfg.String()+"/engine-chain", func(t *testing.T) {
			t.Parallel()
			iopWriteEngineChain(t, cfg)
		})
		t.Run(cfg.String()+"/qemu-chain", func(t *testing.T) {
			t.Parallel()
			iopWriteQemuChain(t, cfg)
		})
	}
}

// extFixture is an engine-made extended L2 overlay (64K clusters, 2K
// subclusters) on a raw backing file whose every byte is non-zero, and
// the expected guest content.
type extFixture struct {
	t    *testing.T
	dir  string
	path string
	img  *qcow2.Image
	want []byte
}

func newExtFixture(t *testing.T, size int64) *extFixture {
	dir := t.TempDir()
	f := &extFixture{t: t, dir: dir, path: filepath.Join(dir, "top.qcow2"), want: make([]byte, size)}
	for i := range f.want {
		f.want[i] = 0xa0 + byte(i%7)
	}
	if err := os.WriteFile(filepath.Join(dir, "base.raw"), f.want, 0o644); err != nil {
		t.Fatal(err)
	}
	iopCreate(t, f.path, qcow2.CreateOptions{ExtendedL2: true, BackingFile: "base.raw", BackingFormat: "raw"})
	f.open()
	return f
}

func (f *extFixture) open() {
	img, err := qcow2.Open(f.path, qcow2.Options{})
	if err != nil {
		f.t.Fatal(err)
	}
	f.img = img
}

func (f *extFixture) write(off int64, p []byte) {
	f.t.Helper()
	if _, err := f.img.WriteAt(p, off); err != nil {
		f.t.Fatalf("WriteAt(%d, %d bytes): %v", off, len(p), err)
	}
	copy(f.want[off:], p)
}

func (f *extFixture) zero(off, n int64, unmap bool) {
	f.t.Helper()
	if err := f.img.WriteZeroes(off, n, unmap); err != nil {
		f.t.Fatalf("WriteZeroes(%d, %d, %v): %v", off, n, unmap, err)
	}
	clear(f.want[off : off+n])
}

// extent returns the engine's Map extent covering guest offset off.
func (f *extFixture) extent(off int64) qcow2.Extent {
	f.t.Helper()
	ext, err := f.img.Map(0, f.img.Size())
	if err != nil {
		f.t.Fatal(err)
	}
	for _, e := range ext {
		if off >= e.Start && off < e.Start+e.Length {
			return e
		}
	}
	f.t.Fatalf("no extent covers %d: %+v", off, ext)
	return qcow2.Extent{}
}

// wantExtent checks the extent at off: its depth, data/zero flags and end.
func (f *extFixture) wantExtent(off int64, depth int, data, zero bool, end int64) qcow2.Extent {
	f.t.Helper()
	e := f.extent(off)
	if e.Depth != depth || e.Data != data || e.Zero != zero || e.Start+e.Length != end {
		f.t.Errorf("extent at %d: %+v; want depth %d data %v zero %v ending at %d", off, e, depth, data, zero, end)
	}
	return e
}

// hostBytes reads n bytes of the image file at host offset off.
func (f *extFixture) hostBytes(off, n int64) []byte {
	f.t.Helper()
	fh, err := os.Open(f.path)
	if err != nil {
		f.t.Fatal(err)
	}
	defer fh.Close()
	b := make([]byte, n)
	if _, err := fh.ReadAt(b, off); err != nil {
		f.t.Fatal(err)
	}
	return b
}

// verify closes the image and checks it with qemu-img (check, compare,
// map) and by reading it back through the engine.
func (f *extFixture) verify() {
	f.t.Helper()
	if err := f.img.Close(); err != nil {
		f.t.Fatal(err)
	}
	ref := filepath.Join(f.dir, "ref.raw")
	if err := os.WriteFile(ref, f.want, 0o644); err != nil {
		f.t.Fatal(err)
	}
	qemutest.MustCheckClean(f.t, f.path, "qcow2")
	qemutest.MustCompare(f.t, f.path, "qcow2", ref, "raw")
	// The reader is closed before the writer reopens: a reader's lock
	// keeps writers out.
	func() {
		img, err := qcow2.Open(f.path, qcow2.Options{ReadOnly: true})
		if err != nil {
			f.t.Fatal(err)
		}
		defer img.Close()
		qemutest.MustReaderAtEqual(f.t, f.want, img, 1<<20)
		iopCheckMap(f.t, img, f.want, f.path)
	}()
	f.open()
}

// TestExtendedL2SubclusterWrites: a write of one subcluster over a backing
// file allocates that subcluster only (nothing is copied from the backing
// file, the rest of the cluster keeps reading through it); a partial
// subcluster write copies the rest of that subcluster only; zeroing and
// discarding whole subclusters goes through the bitmap; copy-on-write of
// a cluster shared with a snapshot and rewrites of compressed clusters
// keep every subcluster's content.
func TestExtendedL2SubclusterWrites(t *testing.T) {
	testtools.Need(t, "qemu-img")
	const K = 1 << 10
	const cs, sc = 64 * K, 2 * K
	f := newExtFixture(t, 2<<20)

	// One whole subcluster (the third of cluster 1).
	f.write(cs+2*sc, bytes.Repeat([]byte{0x11}, sc))
	f.wantExtent(cs, 1, true, false, cs+2*sc)
	e := f.wantExtent(cs+2*sc, 0, true, false, cs+3*sc)
	f.wantExtent(cs+3*sc, 1, true, false, 2<<20)
	host := e.Offset - 2*sc
	if e.Offset < 0 || host%cs != 0 {
		t.Fatalf("data extent %+v: host offset not in a cluster at subcluster 2", e)
	}
	// Nothing of the backing file was copied into the host cluster.
	if b := f.hostBytes(host, cs); !bytes.Equal(b[:2*sc], make([]byte, 2*sc)) || !bytes.Equal(b[3*sc:], make([]byte, cs-3*sc)) {
		t.Errorf("the host cluster holds more than the written subcluster")
	}
	f.verify()

	// 100 bytes inside subcluster 5: that subcluster alone is completed
	// from the backing file.
	f.write(cs+5*sc+50, bytes.Repeat([]byte{0x22}, 100))
	f.wantExtent(cs+3*sc, 1, true, false, cs+5*sc)
	f.wantExtent(cs+5*sc, 0, true, false, cs+6*sc)
	b := f.hostBytes(host, cs)
	if !bytes.Equal(b[5*sc:6*sc], f.want[cs+5*sc:cs+6*sc]) || !bytes.Equal(b[3*sc:5*sc], make([]byte, 2*sc)) {
		t.Errorf("partial subcluster write: host subclusters 3-5 are wrong")
	}
	f.verify()

	// Zero subcluster 2 keeping the allocation, discard subclusters 7-8
	// (unallocated, over backing data): both read zeros via the bitmap.
	f.zero(cs+2*sc, sc, false)
	f.wantExtent(cs+2*sc, 0, false, true, cs+3*sc)
	if err := f.img.Discard(cs+7*sc, 2*sc); err != nil {
		t.Fatal(err)
	}
	clear(f.want[cs+7*sc : cs+9*sc])
	f.wantExtent(cs+7*sc, 0, false, true, cs+9*sc)
	// An unaligned zero range allocates its partial subclusters.
	f.zero(cs+10*sc+100, 3*sc, true)
	f.verify()

	// Rewriting the zeroed subcluster 2 must not expose its old bytes.
	f.write(cs+2*sc+10, []byte{0x33})
	if got := f.hostBytes(host+2*sc, sc); !bytes.Equal(got, f.want[cs+2*sc:cs+3*sc]) {
		t.Errorf("subcluster 2 after zeroing and a one-byte write holds stale bytes")
	}
	f.verify()

	// A snapshot shares the cluster; a write then copies it, and the
	// stored subclusters move along.
	if _, err := f.img.CreateSnapshot("s1"); err != nil {
		t.Fatal(err)
	}
	snap := bytes.Clone(f.want)
	f.write(cs+20*sc, bytes.Repeat([]byte{0x44}, 300))
	if e := f.extent(cs + 20*sc); e.Offset-20*sc == host {
		t.Errorf("the write to a cluster shared with a snapshot went in place")
	}
	f.verify()
	v, err := f.img.OpenSnapshot("s1")
	if err != nil {
		t.Fatal(err)
	}
	qemutest.MustReaderAtEqual(t, snap, v, 1<<20)

	// A compressed cluster has no subclusters: a subcluster write turns
	// it into a fully allocated one.
	comp := bytes.Repeat([]byte("compressible "), int(cs)/13+1)[:cs]
	if err := f.img.WriteCompressed(comp, 8*cs); err != nil {
		t.Fatal(err)
	}
	copy(f.want[8*cs:], comp)
	if e := f.extent(8 * cs); !e.Compressed {
		t.Fatalf("extent %+v is not compressed", e)
	}
	f.verify()
	f.write(8*cs+3*sc+7, []byte{1, 2, 3})
	f.wantExtent(8*cs, 0, true, false, 9*cs)
	f.zero(9*cs, 4*cs, true)
	f.verify()
	if err := f.img.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestExtendedL2QemuSubclusters reads qemu-io's single-subcluster writes,
// zeroes and discards (with and without unmap) through the engine, then
// lets the engine write over them.
func TestExtendedL2QemuSubclusters(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	for _, cl := range []int64{16 << 10, 64 << 10, 2 << 20} {
		cfg := iopConfig{compat: "1.1", cluster: cl, rbits: 16, ext: true}
		t.Run(cfg.String(), func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			sc := cl / 32
			size := 4 * cl
			base := filepath.Join(dir, "base.qcow2")
			qemutest.CreateImage(t, base, qemutest.ImageOptions{Size: size})
			qemutest.QemuIO(t, base, "qcow2", qemutest.Write(0, size, 0x5a))
			top := filepath.Join(dir, "top.qcow2")
			o := cfg.qemu(0)
			o.BackingFile, o.BackingFormat = "base.qcow2", "qcow2"
			qemutest.CreateImage(t, top, o)
			qemutest.QemuIO(t, top, "qcow2",
				qemutest.Write(sc, sc, 0x01),            // one subcluster
				qemutest.Write(3*sc+17, 40, 0x02),       // inside one
				qemutest.Write(cl-sc/2, sc, 0x03),       // across clusters
				qemutest.Zero(5*sc, 2*sc),               // zero subclusters
				qemutest.ZeroUnmap(cl+4*sc, sc),         // zero, unmap
				qemutest.Discard(cl+sc, sc),             // discard over backing
				qemutest.Write(2*cl, cl, 0x04),          // whole cluster
				qemutest.Discard(2*cl+8*sc, 4*sc),       // then holes in it
				qemutest.Zero(3*cl, cl),                 // whole zero cluster
				qemutest.Write(3*cl+9*sc+1, sc+5, 0x06)) // data into it
			want := qemutest.ReadGuest(t, top, "qcow2")
			img, err := qcow2.Open(top, qcow2.Options{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			if !img.Info().ExtendedL2 {
				t.Errorf("Info().ExtendedL2 is false")
			}
			iopVerifyReads(t, img, want, cl, rand.New(rand.NewSource(iopSeed(t.Name()))))
			iopCheckMap(t, img, want, top)
			img.Close()

			ref := filepath.Join(dir, "ref.raw")
			if err := os.WriteFile(ref, want, 0o644); err != nil {
				t.Fatal(err)
			}
			l := iopLayer{path: top, ref: ref, cluster: cl}
			ops := []iopOp{
				{kind: iopWrite, off: sc + 100, n: 3 * sc, seed: 9},
				{kind: iopWrite, off: 5*sc + 1, n: 10, seed: 10},
				{kind: iopZero, off: 2 * cl, n: 2 * sc},
				{kind: iopDiscard, off: 3 * cl, n: cl},
				{kind: iopWrite, off: cl + sc, n: 1, seed: 11},
			}
			l.write(t, qcow2.Options{}, ops)
			l.verify(t, ops)
		})
	}
}

// TestExtendedL2CreateRefusals: the geometry QEMU refuses is refused.
func TestExtendedL2CreateRefusals(t *testing.T) {
	dir := t.TempDir()
	for _, o := range []qcow2.CreateOptions{
		{Size: 1 << 20, ExtendedL2: true, ClusterSize: 8 << 10},
		{Size: 1 << 20, ExtendedL2: true, Compat: "0.10"},
		{Size: 1 << 20, Preallocation: qcow2.PreallocMetadata, BackingFile: "x.raw", BackingFormat: "raw", Unsafe: true},
	} {
		p := filepath.Join(dir, "x.qcow2")
		if err := qcow2.Create(p, o); err == nil {
			t.Errorf("Create(%+v) succeeded", o)
		}
		if _, err := os.Stat(p); err == nil {
			t.Errorf("Create(%+v) left a file behind", o)
			os.Remove(p)
		}
	}
}

// TestExtendedL2ChangedRanges: the changed-block queries work at
// subcluster granularity on extended L2 images.
func TestExtendedL2ChangedRanges(t *testing.T) {
	const cs, sc = 64 << 10, 2 << 10
	p := filepath.Join(t.TempDir(), "e.qcow2")
	iopCreate(t, p, qcow2.CreateOptions{Size: 1 << 20, ExtendedL2: true})
	img, err := qcow2.Open(p, qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	write := func(off, n int64) {
		if _, err := img.WriteAt(bytes.Repeat([]byte{1}, int(n)), off); err != nil {
			t.Fatal(err)
		}
	}
	write(cs+2*sc, sc)
	write(3*cs+sc+5, 10)
	want := []qcow2.Range{{Start: cs + 2*sc, Length: sc}, {Start: 3*cs + sc, Length: sc}}
	if got, err := img.AllocatedRanges(""); err != nil || !slices.Equal(got, want) {
		t.Errorf("AllocatedRanges = %v, %v; want %v", got, err, want)
	}
	if _, err := img.CreateSnapshot("s1"); err != nil {
		t.Fatal(err)
	}
	write(cs+7*sc, 100)     // a new subcluster of a shared cluster (copied)
	write(9*cs+30*sc, 2*sc) // a new cluster, last two subclusters
	// A stored subcluster of a shared cluster turns zero: only the
	// bitmap in this layer's (copied) L2 table changes.
	if err := img.WriteZeroes(3*cs+sc, sc, false); err != nil {
		t.Fatal(err)
	}
	got, err := img.ChangedRanges("s1", "")
	if err != nil {
		t.Fatal(err)
	}
	// The copied cluster's other subclusters map to a new host cluster:
	// reported too (changed ranges over-approximate, per subcluster).
	want = []qcow2.Range{{Start: cs + 2*sc, Length: sc}, {Start: cs + 7*sc, Length: sc}, {Start: 3*cs + sc, Length: sc}, {Start: 9*cs + 30*sc, Length: 2 * sc}}
	if !slices.Equal(got, want) {
		t.Errorf("ChangedRanges(s1, active) = %v; want %v", got, want)
	}
}
