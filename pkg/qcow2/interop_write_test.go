package qcow2_test

// Interop, engine -> QEMU: images the engine creates and writes must pass
// `qemu-img check` (exit 0) and `qemu-img compare` against a raw reference
// file to which the same operations were applied with os.File.WriteAt.

import (
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/qemutest"
	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// iopOpKind is an engine operation.
type iopOpKind int

const (
	iopWrite iopOpKind = iota
	iopZero
	iopZeroUnmap
	iopDiscard
	iopResize
)

var iopOpNames = [...]string{"WriteAt", "WriteZeroes(unmap=false)", "WriteZeroes(unmap=true)", "Discard", "Resize"}

// iopOp is one engine operation; for iopResize, n is the new size.
type iopOp struct {
	kind iopOpKind
	off  int64
	n    int64
	seed byte // data of WriteAt: byte i is seed+i%251, so shifted data shows
}

func (o iopOp) String() string {
	if o.kind == iopResize {
		return fmt.Sprintf("Resize(%d)", o.n)
	}
	return fmt.Sprintf("%s(off=%d, len=%d)", iopOpNames[o.kind], o.off, o.n)
}

func iopData(seed byte, n int64) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = seed + byte(i%251)
	}
	return p
}

// iopFromQemu turns generated qemu ops into engine ops.
func iopFromQemu(ops []qemutest.Op) []iopOp {
	out := make([]iopOp, len(ops))
	for i, o := range ops {
		k := map[qemutest.OpKind]iopOpKind{qemutest.OpWrite: iopWrite, qemutest.OpZero: iopZero,
			qemutest.OpZeroUnmap: iopZeroUnmap, qemutest.OpDiscard: iopDiscard}[o.Kind]
		out[i] = iopOp{kind: k, off: o.Off, n: o.Len, seed: o.Pattern}
	}
	return out
}

// apply performs o on the engine image.
func (o iopOp) apply(img *qcow2.Image) error {
	switch o.kind {
	case iopWrite:
		p := iopData(o.seed, o.n)
		n, err := img.WriteAt(p, o.off)
		if err == nil && n != len(p) {
			err = fmt.Errorf("short write: %d of %d bytes", n, len(p))
		}
		return err
	case iopZero:
		return img.WriteZeroes(o.off, o.n, false)
	case iopZeroUnmap:
		return img.WriteZeroes(o.off, o.n, true)
	case iopDiscard:
		return img.Discard(o.off, o.n)
	case iopResize:
		return img.Resize(o.n)
	}
	panic("bad op")
}

// applyRef performs o on the raw reference. discardKeeps says that a
// Discard leaves the data as it was (v2 image with a backing file).
func (o iopOp) applyRef(ref *os.File, discardKeeps bool) error {
	switch o.kind {
	case iopWrite:
		_, err := ref.WriteAt(iopData(o.seed, o.n), o.off)
		return err
	case iopDiscard:
		if discardKeeps {
			return nil
		}
		fallthrough
	case iopZero, iopZeroUnmap:
		_, err := ref.WriteAt(make([]byte, o.n), o.off)
		return err
	case iopResize:
		return ref.Truncate(o.n)
	}
	panic("bad op")
}

// iopEngineOps makes n operations for a layer of the given size; with
// grow, it then grows the image and writes across the old end.
func iopEngineOps(rng *rand.Rand, size, cluster int64, n int, grow bool) []iopOp {
	ops := iopFromQemu(iopGenOps(rng, size, cluster, n, true))
	if grow {
		newSize := size + cluster + 512*(1+rng.Int63n(7))
		ops = append(ops, iopOp{kind: iopResize, n: newSize})
		ops = append(ops,
			iopOp{kind: iopWrite, off: size - 333, n: 333 + 777, seed: 0x77},
			iopOp{kind: iopWrite, off: newSize - 1001, n: 1001, seed: 0x99},
			iopOp{kind: iopZero, off: size - 100, n: 300})
		ops = append(ops, iopFromQemu(iopGenOps(rng, newSize, cluster, 5, true))...)
	}
	return ops
}

// iopLayer is one engine-written image of a chain and its reference file.
type iopLayer struct {
	path    string
	ref     string // raw file with the expected guest content
	cluster int64
	// discardKeeps: Discard is a no-op (v2 with a backing file).
	discardKeeps bool
}

// write opens the layer with the engine and applies ops to it and to the
// reference.
func (l iopLayer) write(t *testing.T, opts qcow2.Options, ops []iopOp) {
	t.Helper()
	img, err := qcow2.Open(l.path, opts)
	if err != nil {
		t.Fatalf("Open(%s): %v", l.path, err)
	}
	ref, err := os.OpenFile(l.ref, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()
	for i, o := range ops {
		if err := o.apply(img); err != nil {
			img.Close()
			t.Fatalf("%s: op %d %s: %v", l.path, i, o, err)
		}
		if err := o.applyRef(ref, l.discardKeeps); err != nil {
			t.Fatal(err)
		}
	}
	if err := img.Close(); err != nil {
		t.Fatalf("Close(%s): %v", l.path, err)
	}
	if err := ref.Close(); err != nil {
		t.Fatal(err)
	}
}

// verify runs qemu-img check and compare on the layer and reads it back
// through the engine. On failure it logs the operations that made it.
func (l iopLayer) verify(t *testing.T, ops []iopOp) {
	t.Helper()
	defer func() {
		if t.Failed() {
			t.Logf("%s was written with %d ops: %v", filepath.Base(l.path), len(ops), ops)
		}
	}()
	st, err := os.Stat(l.ref)
	if err != nil {
		t.Fatal(err)
	}
	if c := qemutest.Check(t, l.path, "qcow2", ""); !c.Clean() {
		t.Fatalf("qemu-img check of engine-written %s is not clean: %s", l.path, c.Output)
	}
	if info := qemutest.Info(t, l.path, "qcow2"); info.VirtualSize != st.Size() {
		t.Errorf("qemu-img info: virtual size %d, want %d", info.VirtualSize, st.Size())
	}
	if same, msg := qemutest.Compare(t, l.path, "qcow2", l.ref, "raw", false); !same {
		got := qemutest.ReadGuest(t, l.path, "qcow2")
		want, _ := os.ReadFile(l.ref)
		t.Fatalf("qemu-img compare %s %s: %s\n%s", l.path, l.ref, msg, qemutest.DiffBytes(want, got, 0))
	}
	want, err := os.ReadFile(l.ref)
	if err != nil {
		t.Fatal(err)
	}
	img, err := qcow2.Open(l.path, qcow2.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("reopen %s: %v", l.path, err)
	}
	defer img.Close()
	if img.Size() != int64(len(want)) {
		t.Fatalf("engine Size() = %d after reopen, want %d", img.Size(), len(want))
	}
	qemutest.MustReaderAtEqual(t, want, img, int(max(l.cluster, 1<<20)))
}

// iopCopyGuest writes the guest content of src into a new raw file dst.
func iopCopyGuest(t *testing.T, src, srcFmt, dst string) {
	t.Helper()
	qemutest.ConvertToRaw(t, src, srcFmt, dst)
}

// iopCopyFile copies a raw reference.
func iopCopyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func iopCreate(t *testing.T, path string, o qcow2.CreateOptions) {
	t.Helper()
	if err := qcow2.Create(path, o); err != nil {
		t.Fatalf("Create(%s, %+v): %v", path, o, err)
	}
}

// iopCheckCreated compares qemu-img info of an engine-created image with
// the options it was created with.
func iopCheckCreated(t *testing.T, path string, cfg iopConfig, backing, backingFmt string) {
	t.Helper()
	info := qemutest.Info(t, path, "qcow2")
	d := info.FormatSpecific.Data
	if info.Format != "qcow2" || info.ClusterSize != cfg.cluster || d.Compat != cfg.compat ||
		d.RefcountBits != cfg.rbits || d.LazyRefcounts != cfg.lazy || d.ExtendedL2 != cfg.ext || info.BackingFilename != backing ||
		(backingFmt != "" && info.BackingFilenameFmt != backingFmt) || info.DirtyFlag || d.Corrupt {
		t.Errorf("qemu-img info of engine-created %s (%s, backing %q %q): %+v", path, cfg, backing, backingFmt, info)
	}
}

// TestInteropWriteEngineChain: base, mid and top all created and written
// by the engine, for the whole option matrix.
func TestInteropWriteEngineChain(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	t.Parallel()
	iopEach(t, iopMatrix(), func(t *testing.T, cfg iopConfig, _ *rand.Rand) {
		iopWriteEngineChain(t, cfg)
	})
}

// iopWriteEngineChain creates base, mid and top with the engine and
// writes each with random operations, checking every layer with qemu-img.
func iopWriteEngineChain(t *testing.T, cfg iopConfig) {
	rng := rand.New(rand.NewSource(iopSeed(t.Name())))
	dir := t.TempDir()
	size := iopSize(cfg.cluster)
	ref := filepath.Join(dir, "ref.raw")
	qemutest.CreateRaw(t, ref, size)

	base := iopLayer{path: filepath.Join(dir, "base.qcow2"), ref: ref, cluster: cfg.cluster}
	iopCreate(t, base.path, cfg.engine(size))
	if err := qcow2.Create(base.path, cfg.engine(size)); err == nil {
		t.Errorf("Create over an existing image succeeded")
	}
	iopCheckCreated(t, base.path, cfg, "", "")
	qemutest.MustCheckClean(t, base.path, "qcow2")
	ops := iopEngineOps(rng, size, cfg.cluster, 25, false)
	base.write(t, qcow2.Options{}, ops)
	base.verify(t, ops)

	for i, name := range []string{"mid.qcow2", "top.qcow2"} {
		backing := filepath.Base(base.path)
		l := iopLayer{path: filepath.Join(dir, name), ref: ref, cluster: cfg.cluster, discardKeeps: cfg.v2()}
		o := cfg.engine(0)
		o.BackingFile, o.BackingFormat = backing, "qcow2"
		iopCreate(t, l.path, o)
		iopCheckCreated(t, l.path, cfg, backing, "qcow2")
		ops := iopEngineOps(rng, size, cfg.cluster, 25, i == 1)
		l.write(t, qcow2.Options{}, ops)
		l.verify(t, ops)
		base = l
	}
}

// TestInteropWriteQemuChain: qemu makes base (raw for some rows) and mid
// and writes them; the engine then writes into the qemu-made mid, and
// creates and writes a top on it.
func TestInteropWriteQemuChain(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	t.Parallel()
	iopEach(t, iopMatrix(), func(t *testing.T, cfg iopConfig, _ *rand.Rand) {
		iopWriteQemuChain(t, cfg)
	})
}

// iopWriteQemuChain: qemu makes and writes base and mid, the engine writes
// into mid and then creates and writes a top over it.
func iopWriteQemuChain(t *testing.T, cfg iopConfig) {
	rng := rand.New(rand.NewSource(iopSeed(t.Name())))
	dir := t.TempDir()
	size := iopSize(cfg.cluster)
	baseFmt := "qcow2"
	if cfg.rbits == 16 && !cfg.lazy {
		baseFmt = "raw"
	}
	_, mid := iopQemuBaseAndMid(t, rng, dir, cfg, baseFmt, size, 20)
	ref := filepath.Join(dir, "ref.raw")
	iopCopyGuest(t, mid, "qcow2", ref)

	// The engine writes into the qemu-made mid.
	l := iopLayer{path: mid, ref: ref, cluster: cfg.cluster, discardKeeps: cfg.v2()}
	ops := iopEngineOps(rng, size, cfg.cluster, 20, false)
	l.write(t, qcow2.Options{}, ops)
	l.verify(t, ops)

	// The engine creates a top over the qemu chain and writes it.
	l.path = filepath.Join(dir, "top.qcow2")
	eo := cfg.engine(0)
	eo.BackingFile, eo.BackingFormat = "mid.qcow2", "qcow2"
	iopCreate(t, l.path, eo)
	iopCheckCreated(t, l.path, cfg, "mid.qcow2", "qcow2")
	ops = iopEngineOps(rng, size, cfg.cluster, 25, true)
	l.write(t, qcow2.Options{}, ops)
	l.verify(t, ops)
}

// TestInteropWriteRawBacking: an engine-created v2 and v3 overlay straight
// on a raw file, with the format probed (BackingFormat "").
func TestInteropWriteRawBacking(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	t.Parallel()
	iopEach(t, []iopConfig{
		{compat: "0.10", cluster: 4 << 10, rbits: 16},
		{compat: "1.1", cluster: 64 << 10, rbits: 1, lazy: true},
	}, func(t *testing.T, cfg iopConfig, rng *rand.Rand) {
		dir := t.TempDir()
		size := iopSize(cfg.cluster)
		base := filepath.Join(dir, "golden.img")
		qemutest.CreateRaw(t, base, size)
		qemutest.QemuIO(t, base, "raw", qemutest.Write(0, size, 0xa5), qemutest.Zero(size/2, 12345))
		ref := filepath.Join(dir, "ref.raw")
		iopCopyFile(t, base, ref)
		l := iopLayer{path: filepath.Join(dir, "vol.qcow2"), ref: ref, cluster: cfg.cluster, discardKeeps: cfg.v2()}
		o := cfg.engine(0)
		o.BackingFile = "golden.img"
		iopCreate(t, l.path, o)
		iopCheckCreated(t, l.path, cfg, "golden.img", "raw")
		ops := iopEngineOps(rng, size, cfg.cluster, 40, true)
		l.write(t, qcow2.Options{}, ops)
		l.verify(t, ops)
	})
}

// TestInteropWritePrealloc: engine-created preallocated images (and
// qemu-created ones the engine writes into) stay clean and preallocated.
func TestInteropWritePrealloc(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	t.Parallel()
	for _, prealloc := range []string{qcow2.PreallocMetadata, qcow2.PreallocFalloc, qcow2.PreallocFull} {
		for _, cfg := range []iopConfig{
			{compat: "0.10", cluster: 4 << 10, rbits: 16},
			{compat: "1.1", cluster: 512, rbits: 1},
			{compat: "1.1", cluster: 64 << 10, rbits: 64, lazy: true},
			{compat: "1.1", cluster: 2 << 20, rbits: 16},
		} {
			for _, maker := range []string{"engine", "qemu"} {
				name := prealloc + "/" + cfg.String() + "/" + maker
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					rng := rand.New(rand.NewSource(iopSeed(name)))
					dir := t.TempDir()
					size := iopSize(cfg.cluster)
					ref := filepath.Join(dir, "ref.raw")
					qemutest.CreateRaw(t, ref, size)
					l := iopLayer{path: filepath.Join(dir, "p.qcow2"), ref: ref, cluster: cfg.cluster}
					if maker == "engine" {
						o := cfg.engine(size)
						o.Preallocation = prealloc
						iopCreate(t, l.path, o)
						iopCheckCreated(t, l.path, cfg, "", "")
					} else {
						o := cfg.qemu(size)
						o.Preallocation = prealloc
						qemutest.CreateImage(t, l.path, o)
					}
					c := qemutest.MustCheckClean(t, l.path, "qcow2")
					if nc := (size + cfg.cluster - 1) / cfg.cluster; c.AllocatedClusters != nc {
						t.Errorf("preallocation=%s: qemu-img check reports %d allocated clusters, want %d", prealloc, c.AllocatedClusters, nc)
					}
					if prealloc == qcow2.PreallocFull {
						st, err := os.Stat(l.path)
						if err != nil {
							t.Fatal(err)
						}
						if st.Size() < size {
							t.Errorf("preallocation=full: file is %d bytes, want at least %d", st.Size(), size)
						}
					}
					ops := iopEngineOps(rng, size, cfg.cluster, 30, true)
					l.write(t, qcow2.Options{}, ops)
					l.verify(t, ops)
				})
			}
		}
	}
}

// TestInteropWriteDirtyLazy: a qemu image left dirty with lazy refcounts
// (qemu-io aborted) opens writable in the engine, which rebuilds the
// refcounts; after engine writes qemu-img check is clean.
func TestInteropWriteDirtyLazy(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	t.Parallel()
	iopEach(t, []iopConfig{
		{compat: "1.1", cluster: 4 << 10, rbits: 16, lazy: true},
		{compat: "1.1", cluster: 512, rbits: 1, lazy: true},
	}, func(t *testing.T, cfg iopConfig, rng *rand.Rand) {
		dir := t.TempDir()
		size := iopSize(cfg.cluster)
		path := filepath.Join(dir, "dirty.qcow2")
		qemutest.CreateImage(t, path, cfg.qemu(size))
		args := []string{"-f", "qcow2"}
		for _, op := range iopGenOps(rng, size, cfg.cluster, 40, false) {
			args = append(args, "-c", op.QemuIO())
		}
		qemutest.RunExit(t, "qemu-io", append(args, "-c", "abort", path)...)
		if c := qemutest.Check(t, path, "qcow2", ""); c.Clean() {
			t.Fatalf("expected a dirty image with refcount errors: %s", c.Output)
		}
		ref := filepath.Join(dir, "ref.raw")
		iopCopyGuest(t, path, "qcow2", ref)
		l := iopLayer{path: path, ref: ref, cluster: cfg.cluster}
		ops := iopEngineOps(rng, size, cfg.cluster, 30, true)
		l.write(t, qcow2.Options{}, ops)
		l.verify(t, ops)
	})
}

// TestInteropWriteErrors: out-of-range writes fail with ErrRange and change
// nothing; writes to a read-only image fail with ErrReadOnly.
func TestInteropWriteErrors(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	t.Parallel()
	dir := t.TempDir()
	cfg := iopConfig{compat: "1.1", cluster: 4 << 10, rbits: 16}
	size := iopSize(cfg.cluster)
	path := filepath.Join(dir, "e.qcow2")
	iopCreate(t, path, cfg.engine(size))
	img, err := qcow2.Open(path, qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range [][2]int64{{size - 10, 20}, {size, 1}, {size + 1<<20, 4096}} {
		if _, err := img.WriteAt(make([]byte, r[1]), r[0]); !errors.Is(err, qcow2.ErrRange) {
			t.Errorf("WriteAt(off=%d, len=%d) past the end (size %d): %v, want ErrRange", r[0], r[1], size, err)
		}
		if err := img.WriteZeroes(r[0], r[1], false); !errors.Is(err, qcow2.ErrRange) {
			t.Errorf("WriteZeroes(off=%d, len=%d) past the end: %v, want ErrRange", r[0], r[1], err)
		}
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	c := qemutest.MustCheckClean(t, path, "qcow2")
	if c.AllocatedClusters != 0 {
		t.Errorf("failed writes allocated %d clusters", c.AllocatedClusters)
	}
	img, err = qcow2.Open(path, qcow2.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if _, err := img.WriteAt([]byte{1}, 0); !errors.Is(err, qcow2.ErrReadOnly) {
		t.Errorf("WriteAt on a read-only image: %v, want ErrReadOnly", err)
	}
	if err := img.Discard(0, 4096); !errors.Is(err, qcow2.ErrReadOnly) {
		t.Errorf("Discard on a read-only image: %v, want ErrReadOnly", err)
	}
	if err := img.Resize(2 * size); !errors.Is(err, qcow2.ErrReadOnly) {
		t.Errorf("Resize on a read-only image: %v, want ErrReadOnly", err)
	}
}

// TestInteropWriteCompressed: the engine writes into a qemu-compressed
// image (partial overwrites of compressed clusters, zeroes, discards,
// grow), and into an engine-created overlay on it (a compressed golden
// image, the CDI case).
func TestInteropWriteCompressed(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	t.Parallel()
	iopEach(t, iopCompressedConfigs(), func(t *testing.T, c iopCompressedConfig, rng *rand.Rand) {
		dir := t.TempDir()
		golden, size := iopMakeCompressed(t, dir, c, rng)

		// An overlay first, while the golden image is unchanged.
		ref := filepath.Join(dir, "ref-top.raw")
		iopCopyGuest(t, golden, "qcow2", ref)
		l := iopLayer{path: filepath.Join(dir, "top.qcow2"), ref: ref, cluster: c.cfg.cluster, discardKeeps: c.cfg.v2()}
		o := c.cfg.engine(0)
		o.BackingFile, o.BackingFormat = "golden.qcow2", "qcow2"
		iopCreate(t, l.path, o)
		ops := iopEngineOps(rng, size, c.cfg.cluster, 25, true)
		l.write(t, qcow2.Options{}, ops)
		l.verify(t, ops)

		// Then the compressed image itself.
		ref = filepath.Join(dir, "ref-golden.raw")
		iopCopyGuest(t, golden, "qcow2", ref)
		l = iopLayer{path: golden, ref: ref, cluster: c.cfg.cluster}
		ops = iopEngineOps(rng, size, c.cfg.cluster, 40, true)
		l.write(t, qcow2.Options{}, ops)
		l.verify(t, ops)
	})
}

// TestInteropWriteSnapshots: the engine writes into the active layer of a
// qemu image with internal snapshots. Clusters shared with a snapshot must
// be copied, not overwritten: afterwards qemu-img check is clean, the
// active layer matches the reference, every snapshot still reads as it
// did when it was taken, and qemu can revert to one.
func TestInteropWriteSnapshots(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	t.Parallel()
	iopEach(t, iopSnapshotConfigs(), func(t *testing.T, cfg iopConfig, rng *rand.Rand) {
		dir := t.TempDir()
		path, size := iopMakeSnapshots(t, dir, cfg, rng)
		ref := filepath.Join(dir, "ref.raw")
		iopCopyGuest(t, path, "qcow2", ref)
		l := iopLayer{path: path, ref: ref, cluster: cfg.cluster}
		ops := iopEngineOps(rng, size, cfg.cluster, 50, false)
		l.write(t, qcow2.Options{}, ops)
		l.verify(t, ops)
		for _, s := range []string{"s1", "s2"} {
			got := filepath.Join(dir, s+".after.raw")
			qemutest.ConvertSnapshotToRaw(t, path, s, got)
			d, err := qemutest.FilesDiff(filepath.Join(dir, s+".raw"), got)
			if err != nil {
				t.Fatal(err)
			}
			if d != "" {
				t.Errorf("snapshot %s changed by engine writes to the active layer: %s", s, d)
			}
		}
		qemutest.Run(t, "qemu-img", "snapshot", "-a", "s1", path)
		qemutest.MustCheckClean(t, path, "qcow2")
		qemutest.MustCompare(t, path, "qcow2", filepath.Join(dir, "s1.raw"), "raw")
	})
}
