package qcow2_test

// Interop, QEMU -> engine: images created and written by qemu-img/qemu-io
// must read byte-exact through the engine, compared with what
// `qemu-img convert -O raw` produces from the same image.
//
// This file also holds the option matrix and the helpers that
// interop_write_test.go and random_diff_test.go share (prefixed iop).

import (
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/qemutest"
	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// iopConfig is one point of the format option matrix.
type iopConfig struct {
	compat  string // "0.10" (v2) or "1.1" (v3)
	cluster int64
	rbits   int
	lazy    bool
	ext     bool // extended L2 entries (subclusters)
}

func (c iopConfig) v2() bool { return c.compat == "0.10" }

func (c iopConfig) String() string {
	v := "v3"
	if c.v2() {
		v = "v2"
	}
	s := fmt.Sprintf("%s-c%s-rb%d", v, qemutest.SizeString(c.cluster), c.rbits)
	if c.lazy {
		s += "-lazy"
	}
	if c.ext {
		s += "-extl2"
	}
	return s
}

// qemu returns qemu-img create options for c.
func (c iopConfig) qemu(size int64) qemutest.ImageOptions {
	return qemutest.ImageOptions{Size: size, ClusterSize: c.cluster, Compat: c.compat, RefcountBits: c.rbits, LazyRefcounts: c.lazy, ExtendedL2: c.ext}
}

// engine returns qcow2.Create options for c.
func (c iopConfig) engine(size int64) qcow2.CreateOptions {
	return qcow2.CreateOptions{Size: size, ClusterSize: c.cluster, Compat: c.compat, RefcountBits: c.rbits, LazyRefcounts: c.lazy, ExtendedL2: c.ext}
}

// iopMatrix is v2 (compat 0.10) and v3 (compat 1.1) x cluster sizes 512,
// 4K, 64K, 2M x refcount_bits 1, 16, 64 x lazy refcounts off/on. QEMU
// allows only 16-bit refcounts and no lazy refcounts with compat=0.10, so
// the v2 rows have just the cluster sizes.
func iopMatrix() []iopConfig {
	var m []iopConfig
	for _, cl := range []int64{512, 4 << 10, 64 << 10, 2 << 20} {
		m = append(m, iopConfig{compat: "0.10", cluster: cl, rbits: 16})
		for _, rb := range []int{1, 16, 64} {
			for _, lazy := range []bool{false, true} {
				m = append(m, iopConfig{compat: "1.1", cluster: cl, rbits: rb, lazy: lazy})
			}
		}
	}
	return m
}

// iopSize is the guest size used for a cluster size: a few clusters at
// least, small enough to keep the matrix fast, and deliberately not a
// multiple of the cluster size (nor of 4K) so the last cluster is partial.
func iopSize(cluster int64) int64 {
	base := int64(3 << 20)
	if cluster >= 2<<20 {
		base = 6 << 20
	}
	return base + 3*512
}

// iopGenOps makes n guest operations in [0, size) for a layer: writes of
// odd lengths at odd offsets that cross cluster boundaries, tiny writes,
// aligned cluster writes, zeroes with and without unmap, and discards
// (aligned and not). Patterns are never zero, so data from every layer is
// visible.
func iopGenOps(rng *rand.Rand, size, cluster int64, n int, discards bool) []qemutest.Op {
	ops := make([]qemutest.Op, 0, n)
	nclusters := (size + cluster - 1) / cluster
	pat := func() byte { return byte(1 + rng.Intn(255)) }
	for len(ops) < n {
		var off, l int64
		kind := qemutest.OpWrite
		switch r := rng.Intn(100); {
		case r < 30: // odd length at an odd offset across a cluster boundary
			b := (1 + rng.Int63n(max(nclusters-1, 1))) * cluster
			off = b - 1 - 2*rng.Int63n(min(cluster/2, 4096))
			l = 2*rng.Int63n(min(2*cluster, 1<<20)) + 2 + (b - off)
		case r < 45: // tiny write anywhere
			off = rng.Int63n(size)
			l = 1 + rng.Int63n(7)
		case r < 55: // whole clusters
			off = rng.Int63n(nclusters) * cluster
			l = cluster * (1 + rng.Int63n(3))
		case r < 65: // unaligned, inside one cluster
			c := rng.Int63n(nclusters) * cluster
			off = c + rng.Int63n(cluster)
			l = 1 + rng.Int63n(cluster-(off-c))
		case r < 75:
			kind = qemutest.OpZero
			off = rng.Int63n(size)
			l = 1 + rng.Int63n(min(3*cluster, 1<<20))
		case r < 85:
			kind = qemutest.OpZeroUnmap
			if rng.Intn(2) == 0 {
				off = rng.Int63n(nclusters) * cluster
				l = cluster * (1 + rng.Int63n(3))
			} else {
				off = rng.Int63n(size)
				l = 1 + rng.Int63n(min(3*cluster, 1<<20))
			}
		default:
			if !discards {
				continue
			}
			kind = qemutest.OpDiscard
			if rng.Intn(3) > 0 {
				off = rng.Int63n(nclusters) * cluster
				l = cluster * (1 + rng.Int63n(3))
			} else {
				off = rng.Int63n(size)
				l = 1 + rng.Int63n(min(3*cluster, 1<<20))
			}
		}
		if off < 0 {
			off = 0
		}
		if off >= size {
			continue
		}
		l = min(l, size-off)
		if l <= 0 {
			continue
		}
		ops = append(ops, qemutest.Op{Kind: kind, Off: off, Len: l, Pattern: pat()})
	}
	return ops
}

// iopVerifyReads reads img in several ways and compares each result with
// want: one whole-image read, sequential reads in chunks of a few sizes,
// many random reads of random lengths (crossing cluster boundaries), the
// last byte, and reads past the end (which must fail with ErrRange).
func iopVerifyReads(t *testing.T, img io.ReaderAt, want []byte, cluster int64, rng *rand.Rand) {
	t.Helper()
	size := int64(len(want))
	buf := make([]byte, size)
	check := func(what string, off, n int64) bool {
		t.Helper()
		got := buf[:n]
		m, err := img.ReadAt(got, off)
		if err != nil && !(err == io.EOF && off+n == size && int64(m) == n) {
			t.Errorf("%s: ReadAt(off=%d, len=%d) = %d, %v", what, off, n, m, err)
			return false
		}
		if int64(m) != n {
			t.Errorf("%s: ReadAt(off=%d, len=%d) read %d bytes", what, off, n, m)
			return false
		}
		if d := qemutest.DiffBytes(want[off:off+n], got, off); d != "" {
			t.Errorf("%s: ReadAt(off=%d, len=%d): %s", what, off, n, d)
			return false
		}
		return true
	}
	if !check("whole image", 0, size) {
		return
	}
	for _, chunk := range []int64{cluster, 4096, 7777} {
		if size/chunk > 4000 {
			continue
		}
		for off := int64(0); off < size; off += chunk {
			if !check(fmt.Sprintf("sequential %d-byte reads", chunk), off, min(chunk, size-off)) {
				return
			}
		}
	}
	for i := 0; i < 300; i++ {
		var off, n int64
		switch rng.Intn(4) {
		case 0: // across a cluster boundary
			b := (1 + rng.Int63n(max(size/cluster, 1))) * cluster
			if b >= size {
				b = size - 1
			}
			off = max(0, b-1-rng.Int63n(min(cluster, 8192)))
			n = 1 + rng.Int63n(min(3*cluster, 1<<20))
		case 1:
			off = rng.Int63n(size)
			n = 1 + rng.Int63n(16)
		default:
			off = rng.Int63n(size)
			n = rng.Int63n(min(3*cluster, 1<<20))
		}
		n = min(n, size-off)
		if !check("random read", off, n) {
			return
		}
	}
	check("last byte", size-1, 1)
	for _, r := range [][2]int64{{size - 5, 10}, {size, 1}, {size + 4096, 512}} {
		p := make([]byte, r[1])
		if _, err := img.ReadAt(p, r[0]); !errors.Is(err, qcow2.ErrRange) {
			t.Errorf("ReadAt(off=%d, len=%d) past the end (size %d): err = %v, want ErrRange", r[0], r[1], size, err)
		}
	}
}

// iopCheckMap checks img.Map over the whole image: the extents cover
// [0, size) contiguously, every extent reported as zero reads as zeros in
// want, and the extents equal `qemu-img map --output=json` of path (start,
// length, data, zero, depth, host offset).
func iopCheckMap(t *testing.T, img *qcow2.Image, want []byte, path string) {
	t.Helper()
	size := int64(len(want))
	ext, err := img.Map(0, size)
	if err != nil {
		t.Errorf("Map(0, %d): %v", size, err)
		return
	}
	pos := int64(0)
	for _, e := range ext {
		if e.Start != pos || e.Length <= 0 {
			t.Errorf("Map: extent %+v does not continue at %d: %+v", e, pos, ext)
			return
		}
		if e.Zero && !e.Data {
			for i := e.Start; i < e.Start+e.Length && i < size; i++ {
				if want[i] != 0 {
					t.Errorf("Map: extent %+v reported zero but byte %d is 0x%02x", e, i, want[i])
					return
				}
			}
		}
		pos += e.Length
	}
	if pos != size {
		t.Errorf("Map covers [0, %d), want [0, %d)", pos, size)
	}
	// Against qemu-img map, position by position: data must agree
	// everywhere, depth and host offset where there is data. (Where
	// nothing is allocated the two legitimately differ: beyond the end of
	// a shorter backing chain qemu says depth 0 and the engine the chain
	// length; for zero clusters that keep their host cluster qemu prints
	// the host offset and the engine -1. Extent merging differs with it.)
	qm := qemutest.Map(t, path, "qcow2")
	i, j := 0, 0
	for pos := int64(0); pos < size; {
		for i < len(qm) && qm[i].Start+qm[i].Length <= pos {
			i++
		}
		for j < len(ext) && ext[j].Start+ext[j].Length <= pos {
			j++
		}
		if i == len(qm) || j == len(ext) {
			t.Errorf("Map or qemu-img map ends before %d", pos)
			return
		}
		q, e := qm[i], ext[j]
		qoff := int64(-1)
		if q.Offset != nil {
			qoff = *q.Offset + (pos - q.Start)
		}
		eoff := int64(-1)
		if e.Offset >= 0 {
			eoff = e.Offset + (pos - e.Start)
		}
		// qemu also probes the host file: data clusters over a host hole
		// (preallocation=metadata) are zero for it. So zero must agree
		// where nothing is allocated, and the engine must never claim
		// zero where qemu does not.
		if q.Data != e.Data || (e.Zero && !q.Zero) || (!q.Data && q.Zero != e.Zero) || (q.Data && (q.Depth != e.Depth || qoff != eoff)) {
			t.Errorf("Map at %d: engine extent %+v, qemu-img map entry %+v (host offset here: engine %d, qemu %d)", pos, e, q, eoff, qoff)
			return
		}
		pos = min(q.Start+q.Length, e.Start+e.Length)
	}
}

// iopSeed is a seed derived from a test name, so each subtest is
// reproducible on its own.
func iopSeed(name string) int64 {
	var h int64 = 1469598103934665603
	for _, c := range []byte(name) {
		h = (h ^ int64(c)) * 1099511628211
	}
	return h
}

// iopEach runs body as a parallel subtest per configuration, named after
// it, with a random source seeded from the subtest's name (so a failing
// subtest reruns with the same operations).
func iopEach[C fmt.Stringer](t *testing.T, cfgs []C, body func(t *testing.T, c C, rng *rand.Rand)) {
	for _, c := range cfgs {
		t.Run(c.String(), func(t *testing.T) {
			t.Parallel()
			body(t, c, rand.New(rand.NewSource(iopSeed(t.Name()))))
		})
	}
}

// TestInteropRead reads qemu-made backing chains of depth 3 through the
// engine, for the whole option matrix.
func TestInteropRead(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	t.Parallel()
	for _, cfg := range iopMatrix() {
		bases := []string{"qcow2"}
		// -F raw at the bottom of the chain for the 16-bit rows.
		if cfg.rbits == 16 && !cfg.lazy {
			bases = append(bases, "raw")
		}
		for _, baseFmt := range bases {
			name := cfg.String() + "/base-" + baseFmt
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				iopReadChain(t, cfg, baseFmt, iopSeed(name))
			})
		}
	}
}

// iopQemuBaseAndMid makes, with qemu-img and qemu-io, dir/base.<baseFmt>
// and dir/mid.qcow2 over it (relative name), each written with n random
// operations.
func iopQemuBaseAndMid(t *testing.T, rng *rand.Rand, dir string, cfg iopConfig, baseFmt string, size int64, n int) (base, mid string) {
	t.Helper()
	base = filepath.Join(dir, "base."+baseFmt)
	if baseFmt == "raw" {
		qemutest.CreateRaw(t, base, size)
	} else {
		qemutest.CreateImage(t, base, cfg.qemu(size))
	}
	qemutest.QemuIO(t, base, baseFmt, iopGenOps(rng, size, cfg.cluster, n, true)...)
	mid = filepath.Join(dir, "mid.qcow2")
	o := cfg.qemu(0)
	o.BackingFile, o.BackingFormat = filepath.Base(base), baseFmt
	qemutest.CreateImage(t, mid, o)
	qemutest.QemuIO(t, mid, "qcow2", iopGenOps(rng, size, cfg.cluster, n, true)...)
	return base, mid
}

func iopReadChain(t *testing.T, cfg iopConfig, baseFmt string, seed int64) {
	rng := rand.New(rand.NewSource(seed))
	dir := t.TempDir()
	size := iopSize(cfg.cluster)
	// base <- mid <- top, relative names, one directory. The top is one
	// cluster and a sector larger than its backing chain: that tail reads
	// as zeros.
	base, mid := iopQemuBaseAndMid(t, rng, dir, cfg, baseFmt, size, 25)

	top := filepath.Join(dir, "top.qcow2")
	topSize := size + cfg.cluster + 512
	o := cfg.qemu(topSize)
	o.BackingFile, o.BackingFormat = "mid.qcow2", "qcow2"
	qemutest.CreateImage(t, top, o)
	qemutest.QemuIO(t, top, "qcow2", iopGenOps(rng, topSize, cfg.cluster, 25, true)...)

	for _, layer := range []struct {
		path, backing, backingFmt string
		size                      int64
	}{
		{mid, filepath.Base(base), baseFmt, size},
		{top, "mid.qcow2", "qcow2", topSize},
	} {
		want := qemutest.ReadGuest(t, layer.path, "qcow2")
		if int64(len(want)) != layer.size {
			t.Fatalf("qemu-img convert of %s gave %d bytes, want %d", layer.path, len(want), layer.size)
		}
		img, err := qcow2.Open(layer.path, qcow2.Options{ReadOnly: true})
		if err != nil {
			t.Fatalf("Open(%s): %v", layer.path, err)
		}
		if img.Size() != layer.size || img.ClusterSize() != cfg.cluster {
			t.Errorf("%s: Size() = %d, ClusterSize() = %d; want %d, %d", layer.path, img.Size(), img.ClusterSize(), layer.size, cfg.cluster)
		}
		info := img.Info()
		if info.Compat != cfg.compat || info.RefcountBits != cfg.rbits || info.LazyRefcounts != cfg.lazy || info.ExtendedL2 != cfg.ext ||
			info.BackingFilename != layer.backing || info.BackingFormat != layer.backingFmt || info.Format != "qcow2" {
			t.Errorf("%s: Info() = %+v", layer.path, info)
		}
		iopVerifyReads(t, img, want, cfg.cluster, rng)
		iopCheckMap(t, img, want, layer.path)
		if err := img.Close(); err != nil {
			t.Errorf("Close(%s): %v", layer.path, err)
		}
		if t.Failed() {
			t.Logf("chain: %s", qemutest.Run(t, "qemu-img", "info", "--backing-chain", layer.path))
			return
		}
	}
}

// TestInteropReadPrealloc reads preallocated qemu images (metadata, falloc,
// full) that qemu-io then partly overwrote, zeroed and discarded.
func TestInteropReadPrealloc(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	t.Parallel()
	for _, prealloc := range []string{"metadata", "falloc", "full"} {
		for _, cfg := range []iopConfig{
			{compat: "0.10", cluster: 4 << 10, rbits: 16},
			{compat: "1.1", cluster: 512, rbits: 1},
			{compat: "1.1", cluster: 64 << 10, rbits: 16, lazy: true},
			{compat: "1.1", cluster: 2 << 20, rbits: 64},
		} {
			name := prealloc + "/" + cfg.String()
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				rng := rand.New(rand.NewSource(iopSeed(name)))
				path := filepath.Join(t.TempDir(), "p.qcow2")
				size := iopSize(cfg.cluster)
				o := cfg.qemu(size)
				o.Preallocation = prealloc
				qemutest.CreateImage(t, path, o)
				qemutest.QemuIO(t, path, "qcow2", iopGenOps(rng, size, cfg.cluster, 30, true)...)
				want := qemutest.ReadGuest(t, path, "qcow2")
				img, err := qcow2.Open(path, qcow2.Options{ReadOnly: true})
				if err != nil {
					t.Fatal(err)
				}
				defer img.Close()
				iopVerifyReads(t, img, want, cfg.cluster, rng)
				iopCheckMap(t, img, want, path)
			})
		}
	}
}

// TestInteropReadUnaligned hammers a 512-byte and a 64K cluster image with
// many short writes of odd lengths at odd offsets, most of them straddling
// cluster boundaries, on top of a qcow2 backing file.
func TestInteropReadUnaligned(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	t.Parallel()
	iopEach(t, []iopConfig{
		{compat: "1.1", cluster: 512, rbits: 16},
		{compat: "0.10", cluster: 64 << 10, rbits: 16},
	}, func(t *testing.T, cfg iopConfig, rng *rand.Rand) {
		dir := t.TempDir()
		size := int64(1<<20 + 512)
		base := filepath.Join(dir, "base.qcow2")
		qemutest.CreateImage(t, base, cfg.qemu(size))
		qemutest.QemuIO(t, base, "qcow2", qemutest.Write(0, size, 0x5a))
		top := filepath.Join(dir, "top.qcow2")
		o := cfg.qemu(0)
		o.BackingFile, o.BackingFormat = "base.qcow2", "qcow2"
		qemutest.CreateImage(t, top, o)
		var ops []qemutest.Op
		for i := 0; i < 300; i++ {
			b := (1 + rng.Int63n(size/cfg.cluster-1)) * cfg.cluster
			off := b - 1 - 2*rng.Int63n(min(cfg.cluster/2, 300))
			l := 2*rng.Int63n(700) + 1
			if off+l > size {
				l = size - off
			}
			if rng.Intn(5) == 0 {
				ops = append(ops, qemutest.Zero(off, l))
			} else {
				ops = append(ops, qemutest.Write(off, l, byte(1+rng.Intn(255))))
			}
		}
		ops = append(ops, qemutest.Write(size-3, 3, 0xee), qemutest.Write(1, 1, 0x01))
		qemutest.QemuIO(t, top, "qcow2", ops...)
		want := qemutest.ReadGuest(t, top, "qcow2")
		img, err := qcow2.Open(top, qcow2.Options{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		defer img.Close()
		iopVerifyReads(t, img, want, cfg.cluster, rng)
	})
}

// TestInteropReadDirtyLazy reads an image that qemu-io left dirty (lazy
// refcounts, aborted without closing): the L2 tables are right, the
// refcounts are not, and a read-only open must still read the data.
func TestInteropReadDirtyLazy(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	t.Parallel()
	cfg := iopConfig{compat: "1.1", cluster: 4 << 10, rbits: 16, lazy: true}
	path := filepath.Join(t.TempDir(), "dirty.qcow2")
	size := iopSize(cfg.cluster)
	qemutest.CreateImage(t, path, cfg.qemu(size))
	rng := rand.New(rand.NewSource(iopSeed(t.Name())))
	var cmds []string
	for _, op := range iopGenOps(rng, size, cfg.cluster, 40, false) {
		cmds = append(cmds, op.QemuIO())
	}
	args := []string{"-f", "qcow2"}
	for _, c := range append(cmds, "abort") {
		args = append(args, "-c", c)
	}
	qemutest.RunExit(t, "qemu-io", append(args, path)...)
	if info := qemutest.Info(t, path, "qcow2"); !info.DirtyFlag {
		t.Fatalf("qemu-io abort did not leave the image dirty: %+v", info)
	}
	want := qemutest.ReadGuest(t, path, "qcow2")
	img, err := qcow2.Open(path, qcow2.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("Open(ReadOnly) of a dirty lazy-refcounts image: %v", err)
	}
	defer img.Close()
	if !img.Info().Dirty {
		t.Errorf("Info().Dirty = false for a dirty image opened read-only")
	}
	iopVerifyReads(t, img, want, cfg.cluster, rng)
}

// iopCompressedConfig is a compressed image configuration.
type iopCompressedConfig struct {
	cfg   iopConfig
	ctype string // "zlib" or "zstd" (zstd needs v3)
}

func (c iopCompressedConfig) String() string { return c.cfg.String() + "-" + c.ctype }

func iopCompressedConfigs() []iopCompressedConfig {
	return []iopCompressedConfig{
		{iopConfig{compat: "0.10", cluster: 64 << 10, rbits: 16}, "zlib"},
		{iopConfig{compat: "1.1", cluster: 512, rbits: 16}, "zlib"},
		{iopConfig{compat: "1.1", cluster: 4 << 10, rbits: 1, lazy: true}, "zstd"},
		{iopConfig{compat: "1.1", cluster: 64 << 10, rbits: 64}, "zstd"},
		{iopConfig{compat: "1.1", cluster: 2 << 20, rbits: 16}, "zlib"},
		// Compressed clusters of extended L2 images (no subclusters).
		{iopConfig{compat: "1.1", cluster: 64 << 10, rbits: 16, ext: true}, "zlib"},
		{iopConfig{compat: "1.1", cluster: 16 << 10, rbits: 16, lazy: true, ext: true}, "zstd"},
	}
}

// iopMakeCompressed makes dir/golden.qcow2, a qemu-compressed image whose
// clusters hold compressible patterns, incompressible random data (stored
// uncompressed) and zeros, then partly overwritten by qemu-io.
func iopMakeCompressed(t *testing.T, dir string, c iopCompressedConfig, rng *rand.Rand) (path string, size int64) {
	t.Helper()
	size = iopSize(c.cfg.cluster)
	src := filepath.Join(dir, "src.raw")
	qemutest.CreateRaw(t, src, size)
	qemutest.QemuIO(t, src, "raw", iopGenOps(rng, size, c.cfg.cluster, 30, false)...)
	f, err := os.OpenFile(src, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 4; i++ {
		p := make([]byte, 1+rng.Int63n(min(2*c.cfg.cluster, 256<<10)))
		rng.Read(p)
		if _, err := f.WriteAt(p, rng.Int63n(size-int64(len(p)))); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	path = filepath.Join(dir, "golden.qcow2")
	o := c.cfg.qemu(0)
	o.Extra = []string{"compression_type=" + c.ctype}
	qemutest.ConvertCompressed(t, src, "raw", path, o)
	if cr := qemutest.MustCheckClean(t, path, "qcow2"); cr.CompressedClusters == 0 {
		t.Fatalf("qemu-img convert -c made no compressed clusters: %s", cr.Output)
	}
	os.Remove(src)
	return path, size
}

// TestInteropReadCompressed reads qemu-compressed images (zlib and zstd),
// partly overwritten by qemu-io, directly and as the backing file of an
// overlay.
func TestInteropReadCompressed(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	t.Parallel()
	iopEach(t, iopCompressedConfigs(), func(t *testing.T, c iopCompressedConfig, rng *rand.Rand) {
		dir := t.TempDir()
		golden, size := iopMakeCompressed(t, dir, c, rng)
		top := filepath.Join(dir, "top.qcow2")
		o := c.cfg.qemu(0)
		o.BackingFile, o.BackingFormat = "golden.qcow2", "qcow2"
		qemutest.CreateImage(t, top, o)
		qemutest.QemuIO(t, top, "qcow2", iopGenOps(rng, size, c.cfg.cluster, 15, true)...)
		// Partial overwrites of compressed clusters in the golden
		// image itself, after the overlay exists (its content is
		// then the new golden content plus its own writes).
		qemutest.QemuIO(t, golden, "qcow2", iopGenOps(rng, size, c.cfg.cluster, 10, true)...)
		for _, path := range []string{golden, top} {
			want := qemutest.ReadGuest(t, path, "qcow2")
			img, err := qcow2.Open(path, qcow2.Options{ReadOnly: true})
			if err != nil {
				t.Fatalf("Open(%s): %v", path, err)
			}
			if ct := img.Info().CompressionType; path == golden && ct != c.ctype {
				t.Errorf("Info().CompressionType = %q, want %q", ct, c.ctype)
			}
			iopVerifyReads(t, img, want, c.cfg.cluster, rng)
			iopCheckMap(t, img, want, path)
			img.Close()
		}
	})
}

// iopSnapshotConfigs are the configurations of the internal snapshot tests.
func iopSnapshotConfigs() []iopConfig {
	return []iopConfig{
		{compat: "0.10", cluster: 4 << 10, rbits: 16},
		{compat: "1.1", cluster: 512, rbits: 64},
		// refcount_bits=1 cannot count a snapshot's references, and with
		// 2 bits qemu-img snapshot -a overflows (refcount 4) on its own.
		{compat: "1.1", cluster: 64 << 10, rbits: 4, lazy: true},
		{compat: "1.1", cluster: 64 << 10, rbits: 16},
		{compat: "1.1", cluster: 32 << 10, rbits: 16, ext: true},
	}
}

// iopMakeSnapshots makes dir/snap.qcow2 with qemu: writes, snapshot s1,
// writes, snapshot s2, writes. It returns the raw content of each snapshot
// as files dir/s1.raw and dir/s2.raw.
func iopMakeSnapshots(t *testing.T, dir string, cfg iopConfig, rng *rand.Rand) (path string, size int64) {
	t.Helper()
	size = iopSize(cfg.cluster)
	path = filepath.Join(dir, "snap.qcow2")
	qemutest.CreateImage(t, path, cfg.qemu(size))
	for _, s := range []string{"s1", "s2"} {
		qemutest.QemuIO(t, path, "qcow2", iopGenOps(rng, size, cfg.cluster, 25, true)...)
		qemutest.CreateSnapshot(t, path, s)
		qemutest.ConvertSnapshotToRaw(t, path, s, filepath.Join(dir, s+".raw"))
	}
	qemutest.QemuIO(t, path, "qcow2", iopGenOps(rng, size, cfg.cluster, 25, true)...)
	return path, size
}

// TestInteropReadSnapshots reads the active layer of qemu images that have
// internal snapshots (clusters shared with snapshots, COPIED flags clear).
func TestInteropReadSnapshots(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	t.Parallel()
	iopEach(t, iopSnapshotConfigs(), func(t *testing.T, cfg iopConfig, rng *rand.Rand) {
		path, _ := iopMakeSnapshots(t, t.TempDir(), cfg, rng)
		want := qemutest.ReadGuest(t, path, "qcow2")
		img, err := qcow2.Open(path, qcow2.Options{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		defer img.Close()
		iopVerifyReads(t, img, want, cfg.cluster, rng)
		iopCheckMap(t, img, want, path)
	})
}
