package qcow2_test

// Differential random testing: the engine against a plain raw reference
// file under thousands of seeded random writes, zeroes, discards, resizes
// (grow), reads, flushes and reopens. Every read is compared with the
// reference, every mutation is read back around its range, and the whole
// image is compared periodically. At the end qemu-img check must be clean
// and qemu-img compare must find the image equal to the reference.
//
// Reproduce a failure with the seed it prints:
//
//	QCOW2_SEED=<seed> go test -run 'TestRandomDiff/<config>' ./pkg/qcow2
//
// QCOW2_SEED=random picks a fresh seed (printed); QCOW2_RANDOM_OPS=<n>
// overrides the number of operations per configuration (for soak runs).

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/csi-qcow2/csi-qcow2/internal/qemutest"
	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// rdSeed returns the seed for a configuration: QCOW2_SEED when set
// ("random" draws one), else def.
func rdSeed(t *testing.T, def int64) int64 {
	s := os.Getenv("QCOW2_SEED")
	switch s {
	case "":
		return def
	case "random":
		return time.Now().UnixNano()
	}
	v, err := strconv.ParseInt(s, 0, 64)
	if err != nil {
		t.Fatalf("QCOW2_SEED=%q: %v", s, err)
	}
	return v
}

func rdOps(def int) int {
	if v, err := strconv.Atoi(os.Getenv("QCOW2_RANDOM_OPS")); err == nil && v > 0 {
		return v
	}
	return def
}

// rdConfig is one configuration of the random test.
type rdConfig struct {
	name       string
	seed       int64
	cfg        iopConfig
	backing    string // "", "qcow2" or "raw"
	smallCache bool   // L2 and refcount caches of a cluster or two: constant eviction
	size       int64  // initial guest size
	maxSize    int64  // Resize grows up to this
	ops        int
	// prep: "" (empty engine-created image), "snapshot" (qemu writes
	// into it and takes internal snapshot s1, which must survive the
	// random ops intact) or "compressed" (the image is made by qemu-img
	// convert -c, zstd, from qemu-written patterns; no backing),
	// "engine-compressed" (the same patterns, every cluster written by
	// the engine's WriteCompressedClusters), "prealloc" (created by the
	// engine with preallocation=metadata) or "journal" (an empty image
	// opened with the write journal).
	prep string
}

func rdConfigs() []rdConfig {
	const M = 1 << 20
	v2 := func(cl int64) iopConfig { return iopConfig{compat: "0.10", cluster: cl, rbits: 16} }
	v3 := func(cl int64, rb int, lazy bool) iopConfig {
		return iopConfig{compat: "1.1", cluster: cl, rbits: rb, lazy: lazy}
	}
	ext := func(cl int64, rb int, lazy bool) iopConfig {
		return iopConfig{compat: "1.1", cluster: cl, rbits: rb, lazy: lazy, ext: true}
	}
	return []rdConfig{
		{"v3-c512-rb16-smallcache", 1, v3(512, 16, false), "", true, 8 * M, 12 * M, 2000, ""},
		{"v3-c512-rb1-lazy-rawbacking", 2, v3(512, 1, true), "raw", false, 8 * M, 12 * M, 2000, ""},
		{"v3-c4K-rb1-lazy-qcow2backing-smallcache", 3, v3(4<<10, 1, true), "qcow2", true, 16 * M, 24 * M, 2000, ""},
		// The engine keeps at least 32 L2 slices (512 entries each) and 4
		// refcount blocks whatever the options say: at 4K clusters only an
		// image over 64 MiB evicts L2 slices.
		{"v3-c4K-rb64-smallcache-72M", 4, v3(4<<10, 64, false), "", true, 72 * M, 80 * M, 1500, ""},
		{"v3-c512-rb64-lazy-smallcache", 10, v3(512, 64, true), "", true, 8 * M, 16 * M, 2000, ""},
		{"v3-c64K-rb64-lazy-rawbacking-smallcache", 5, v3(64<<10, 64, true), "raw", true, 32 * M, 48 * M, 1500, ""},
		{"v3-c64K-rb16-qcow2backing", 6, v3(64<<10, 16, false), "qcow2", false, 64 * M, 64 * M, 1500, ""},
		{"v2-c512-rb16-qcow2backing-smallcache", 7, v2(512), "qcow2", true, 8 * M, 12 * M, 2000, ""},
		{"v2-c4K-rb16-smallcache", 8, v2(4 << 10), "", true, 16 * M, 24 * M, 2000, ""},
		{"v2-c64K-rb16-rawbacking", 9, v2(64 << 10), "raw", false, 32 * M, 48 * M, 1500, ""},
		{"v3-c64K-rb16-snapshot", 11, v3(64<<10, 16, false), "", false, 16 * M, 24 * M, 2000, "snapshot"},
		{"v2-c512-rb16-snapshot-qcow2backing-smallcache", 12, v2(512), "qcow2", true, 8 * M, 12 * M, 2000, "snapshot"},
		{"v3-c4K-rb16-lazy-compressed-zstd", 13, v3(4<<10, 16, true), "", false, 16 * M, 24 * M, 2000, "compressed"},
		{"v2-c4K-rb16-prealloc-metadata-smallcache", 14, v2(4 << 10), "", true, 16 * M, 24 * M, 2000, "prealloc"},
		// Extended L2 entries: 512 B subclusters at 16K clusters, 2 KiB
		// at 64K; compressed images with and without them.
		{"v3-c16K-rb16-extl2-qcow2backing-smallcache", 15, ext(16<<10, 16, false), "qcow2", true, 16 * M, 24 * M, 2000, ""},
		{"v3-c64K-rb64-lazy-extl2-rawbacking", 16, ext(64<<10, 64, true), "raw", false, 32 * M, 48 * M, 1500, ""},
		{"v3-c64K-rb16-extl2-compressed-zstd", 17, ext(64<<10, 16, false), "", false, 16 * M, 24 * M, 1500, "compressed"},
		{"v3-c64K-rb16-extl2-prealloc-qcow2backing", 18, ext(64<<10, 16, false), "qcow2", false, 16 * M, 24 * M, 1500, "prealloc"},
		{"v3-c16K-rb16-engine-compressed", 19, v3(16<<10, 16, false), "", false, 16 * M, 24 * M, 1500, "engine-compressed"},
		{"v3-c64K-rb16-extl2-engine-compressed", 20, ext(64<<10, 16, false), "", false, 16 * M, 24 * M, 1500, "engine-compressed"},
		// The write journal: copy-on-write mappings pinned in the cache
		// between flushes (Close and reopen checkpoint them).
		{"v3-c512-rb16-journal-rawbacking-smallcache", 21, v3(512, 16, false), "raw", true, 8 * M, 12 * M, 2000, "journal"},
		{"v3-c64K-rb16-lazy-journal-qcow2backing", 22, v3(64<<10, 16, true), "qcow2", false, 32 * M, 48 * M, 1500, "journal"},
		{"v3-c16K-rb16-extl2-journal-qcow2backing-smallcache", 23, ext(16<<10, 16, false), "qcow2", true, 16 * M, 24 * M, 1500, "journal"},
	}
}

// rdRun is the state of one random run.
type rdRun struct {
	t            *testing.T
	rc           rdConfig
	seed         int64
	rng          *rand.Rand
	dir          string
	path         string
	refPath      string
	opts         qcow2.Options
	img          *qcow2.Image
	ref          *os.File
	size         int64
	discardKeeps bool
	step         int
	hist         []string // the last operations, for failure messages
	a, b         []byte   // read buffers
}

func (r *rdRun) note(format string, args ...any) {
	const keep = 40
	s := fmt.Sprintf("#%d ", r.step) + fmt.Sprintf(format, args...)
	if len(r.hist) == keep {
		copy(r.hist, r.hist[1:])
		r.hist = r.hist[:keep-1]
	}
	r.hist = append(r.hist, s)
}

func (r *rdRun) fatalf(format string, args ...any) {
	r.t.Helper()
	r.t.Fatalf("seed %d (%s), step %d: %s\nlast operations:\n  %s", r.seed, r.rc.name, r.step,
		fmt.Sprintf(format, args...), strings.Join(r.hist, "\n  "))
}

// makeBacking creates the backing file with qemu and fills the reference
// with its guest content. The backing file is a little shorter than the
// image, so the tail reads zeros from nowhere.
func (r *rdRun) makeBacking() (name, format string) {
	t := r.t
	if r.rc.backing == "" {
		qemutest.CreateRaw(t, r.refPath, r.size)
		return "", ""
	}
	bsize := r.size - r.rc.cfg.cluster - 512
	format = r.rc.backing
	name = "backing." + format
	path := filepath.Join(r.dir, name)
	if format == "raw" {
		qemutest.CreateRaw(t, path, bsize)
	} else {
		// Other options than the top on purpose: 64K clusters, v3.
		qemutest.CreateImage(t, path, qemutest.ImageOptions{Size: bsize})
	}
	var ops []qemutest.Op
	for off := int64(0); off < bsize; off += 1 << 20 {
		l := min(bsize-off, int64(1<<20)-r.rng.Int63n(300000))
		if l > 2000 {
			ops = append(ops, qemutest.Write(off+r.rng.Int63n(1000), l-1000, byte(1+r.rng.Intn(255))))
		}
	}
	ops = append(ops, qemutest.Write(bsize-777, 777, 0xbb), qemutest.Zero(bsize/3, 100000))
	qemutest.QemuIO(t, path, format, ops...)
	qemutest.ConvertToRaw(t, path, format, r.refPath)
	if err := os.Truncate(r.refPath, r.size); err != nil {
		t.Fatal(err)
	}
	return name, format
}

// rdWriteCompressed creates an engine image with options co and writes
// every cluster of the raw file ref into it with WriteCompressedClusters
// (clusters of zeros are left unallocated).
func rdWriteCompressed(t *testing.T, ref, path string, co qcow2.CreateOptions) {
	t.Helper()
	data, err := os.ReadFile(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := qcow2.Create(path, co); err != nil {
		t.Fatalf("Create(%+v): %v", co, err)
	}
	img, err := qcow2.Open(path, qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cs := img.ClusterSize()
	var batch []qcow2.CompressedCluster
	for off := int64(0); off < int64(len(data)); off += cs {
		c := data[off:min(off+cs, int64(len(data)))]
		if !bytes.Equal(c, make([]byte, len(c))) {
			batch = append(batch, qcow2.CompressedCluster{Off: off, Data: c})
		}
	}
	if err := img.WriteCompressedClusters(batch); err != nil {
		t.Fatalf("WriteCompressedClusters: %v", err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
}

func (r *rdRun) open() {
	img, err := qcow2.Open(r.path, r.opts)
	if err != nil {
		r.fatalf("Open: %v", err)
	}
	r.img = img
	if img.Size() != r.size {
		r.fatalf("Size() = %d after open, want %d", img.Size(), r.size)
	}
}

// pickRange returns a random range of [0, size) with a mix of lengths
// (tiny, sub-cluster, whole clusters, up to 1 MiB) and offsets (uniform,
// near cluster boundaries, aligned, a hot region for overwrites).
func (r *rdRun) pickRange() (off, n int64) {
	cl, rng := r.rc.cfg.cluster, r.rng
	switch rng.Intn(10) {
	case 0, 1, 2:
		n = 1 + rng.Int63n(4096)
	case 3, 4, 5:
		n = 1 + rng.Int63n(2*cl)
	case 6, 7:
		n = cl * (1 + rng.Int63n(8))
	case 8:
		n = 1 + rng.Int63n(1<<20)
	default:
		n = 1 + rng.Int63n(16)
	}
	n = min(n, r.size)
	switch rng.Intn(10) {
	case 0, 1, 2, 3:
		off = rng.Int63n(r.size - n + 1)
	case 4, 5, 6:
		b := rng.Int63n(r.size/cl+1) * cl
		off = b - rng.Int63n(min(cl, 4096)+1)
	case 7, 8:
		off = rng.Int63n(r.size/cl) * cl
	default:
		off = rng.Int63n(min(r.size, 1<<20))
	}
	off = max(0, min(off, r.size-n))
	return off, n
}

// compare reads [off, off+n) from the image and the reference.
func (r *rdRun) compare(what string, off, n int64) {
	r.t.Helper()
	if cap(r.a) < int(n) {
		r.a, r.b = make([]byte, n), make([]byte, n)
	}
	got, want := r.a[:n], r.b[:n]
	if m, err := r.img.ReadAt(got, off); err != nil || int64(m) != n {
		if !(err == io.EOF && int64(m) == n && off+n == r.size) {
			r.fatalf("%s: ReadAt(off=%d, len=%d) = %d, %v", what, off, n, m, err)
		}
	}
	if _, err := r.ref.ReadAt(want, off); err != nil && err != io.EOF {
		r.t.Fatal(err)
	}
	if d := qemutest.DiffBytes(want, got, off); d != "" {
		r.fatalf("%s: ReadAt(off=%d, len=%d) differs from the reference: %s", what, off, n, d)
	}
}

// window reads back [off, off+n) and a cluster each side.
func (r *rdRun) window(off, n int64) {
	r.t.Helper()
	cl := r.rc.cfg.cluster
	lo := max(0, off-cl)
	hi := min(r.size, off+n+cl)
	if hi-lo > 2<<20 { // long ops: both ends
		r.compare("read-back head", lo, min(2*cl+4096, hi-lo))
		r.compare("read-back tail", max(lo, hi-2*cl-4096), min(2*cl+4096, hi-lo))
		return
	}
	r.compare("read-back", lo, hi-lo)
}

func (r *rdRun) whole(what string) {
	r.t.Helper()
	for off := int64(0); off < r.size; off += 1 << 20 {
		r.compare(what, off, min(1<<20, r.size-off))
	}
}

func (r *rdRun) refWrite(p []byte, off int64) {
	if _, err := r.ref.WriteAt(p, off); err != nil {
		r.t.Fatal(err)
	}
}

var rdZeros = make([]byte, 1<<20)

func (r *rdRun) refZero(off, n int64) {
	for n > 0 {
		l := min(n, int64(len(rdZeros)))
		r.refWrite(rdZeros[:l], off)
		off += l
		n -= l
	}
}

// stepOnce performs one random operation.
func (r *rdRun) stepOnce() {
	rng := r.rng
	switch k := rng.Intn(100); {
	case k < 35 || k >= 88: // write
		off, n := r.pickRange()
		p := make([]byte, n)
		rng.Read(p)
		r.note("WriteAt(off=%d, len=%d)", off, n)
		if m, err := r.img.WriteAt(p, off); err != nil || int64(m) != n {
			r.fatalf("WriteAt(off=%d, len=%d) = %d, %v", off, n, m, err)
		}
		r.refWrite(p, off)
		r.window(off, n)
	case k < 60: // read
		off, n := r.pickRange()
		r.note("ReadAt(off=%d, len=%d)", off, n)
		r.compare("read", off, n)
	case k < 70: // write zeroes
		off, n := r.pickRange()
		unmap := rng.Intn(2) == 0
		r.note("WriteZeroes(off=%d, len=%d, unmap=%v)", off, n, unmap)
		if err := r.img.WriteZeroes(off, n, unmap); err != nil {
			r.fatalf("WriteZeroes(off=%d, len=%d, unmap=%v): %v", off, n, unmap, err)
		}
		r.refZero(off, n)
		r.window(off, n)
	case k < 78: // discard
		off, n := r.pickRange()
		r.note("Discard(off=%d, len=%d)", off, n)
		if err := r.img.Discard(off, n); err != nil {
			r.fatalf("Discard(off=%d, len=%d): %v", off, n, err)
		}
		if !r.discardKeeps {
			r.refZero(off, n)
		}
		r.window(off, n)
	case k < 82: // flush
		r.note("Flush()")
		if err := r.img.Flush(); err != nil {
			r.fatalf("Flush: %v", err)
		}
	case k < 84: // grow
		if r.size >= r.rc.maxSize {
			return
		}
		newSize := min(r.rc.maxSize, r.size+512*(1+rng.Int63n(4096)))
		r.note("Resize(%d) from %d", newSize, r.size)
		if h := r.img.Header(); h.Version == 2 && h.NbSnapshots > 0 {
			// Refused, as by QEMU: v2 snapshots do not record their size.
			if err := r.img.Resize(newSize); !errors.Is(err, qcow2.ErrUnsupported) {
				r.fatalf("Resize of a v2 image with snapshots: %v, want ErrUnsupported", err)
			}
			return
		}
		if err := r.img.Resize(newSize); err != nil {
			r.fatalf("Resize(%d) from %d: %v", newSize, r.size, err)
		}
		if err := r.ref.Truncate(newSize); err != nil {
			r.t.Fatal(err)
		}
		old := r.size
		r.size = newSize
		if got := r.img.Size(); got != newSize {
			r.fatalf("Size() = %d after Resize(%d)", got, newSize)
		}
		r.window(old-1, newSize-old+1)
	case k < 85: // close and reopen
		r.note("Close(); Open()")
		if err := r.img.Close(); err != nil {
			r.fatalf("Close: %v", err)
		}
		r.open()
	default: // out of range: must fail with ErrRange and change nothing
		n := 1 + rng.Int63n(8192)
		off := r.size - rng.Int63n(n) // straddles the end, or starts at it
		if rng.Intn(2) == 0 {
			r.note("ReadAt(off=%d, len=%d) past the end", off, n)
			if _, err := r.img.ReadAt(make([]byte, n), off); !errors.Is(err, qcow2.ErrRange) {
				r.fatalf("ReadAt(off=%d, len=%d) past the end %d: err = %v, want ErrRange", off, n, r.size, err)
			}
		} else {
			r.note("WriteAt(off=%d, len=%d) past the end", off, n)
			p := make([]byte, n)
			rng.Read(p)
			if _, err := r.img.WriteAt(p, off); !errors.Is(err, qcow2.ErrRange) {
				r.fatalf("WriteAt(off=%d, len=%d) past the end %d: err = %v, want ErrRange", off, n, r.size, err)
			}
			r.window(off, r.size-off)
		}
	}
}

// TestRandomDiff runs the sequential differential test for each
// configuration.
func TestRandomDiff(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	t.Parallel()
	for _, rc := range rdConfigs() {
		t.Run(rc.name, func(t *testing.T) {
			t.Parallel()
			r := &rdRun{t: t, rc: rc, dir: t.TempDir(), size: rc.size}
			r.seed = rdSeed(t, rc.seed)
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("reproduce: QCOW2_SEED=%d go test -run 'TestRandomDiff/%s$' ./pkg/qcow2", r.seed, rc.name)
				}
			})
			r.rng = rand.New(rand.NewSource(r.seed))
			r.path = filepath.Join(r.dir, "top.qcow2")
			r.refPath = filepath.Join(r.dir, "ref.raw")
			bname, bfmt := r.makeBacking()
			r.discardKeeps = rc.cfg.v2() && bname != ""
			co := rc.cfg.engine(rc.size)
			co.BackingFile, co.BackingFormat = bname, bfmt
			switch rc.prep {
			case "compressed":
				qemutest.QemuIO(t, r.refPath, "raw", iopGenOps(r.rng, rc.size, rc.cfg.cluster, 200, false)...)
				o := rc.cfg.qemu(0)
				o.Extra = []string{"compression_type=zstd"}
				qemutest.ConvertCompressed(t, r.refPath, "raw", r.path, o)
			case "engine-compressed":
				qemutest.QemuIO(t, r.refPath, "raw", iopGenOps(r.rng, rc.size, rc.cfg.cluster, 200, false)...)
				rdWriteCompressed(t, r.refPath, r.path, co)
			default:
				if rc.prep == "prealloc" {
					co.Preallocation = qcow2.PreallocMetadata
				}
				if err := qcow2.Create(r.path, co); err != nil {
					t.Fatalf("Create(%+v): %v", co, err)
				}
			}
			snapRaw := filepath.Join(r.dir, "s1.raw")
			if rc.prep == "snapshot" {
				qemutest.QemuIO(t, r.path, "qcow2", iopGenOps(r.rng, rc.size, rc.cfg.cluster, 200, true)...)
				qemutest.CreateSnapshot(t, r.path, "s1")
				qemutest.QemuIO(t, r.path, "qcow2", iopGenOps(r.rng, rc.size, rc.cfg.cluster, 50, true)...)
				qemutest.ConvertSnapshotToRaw(t, r.path, "s1", snapRaw)
				os.Remove(r.refPath)
				qemutest.ConvertToRaw(t, r.path, "qcow2", r.refPath)
			}
			if rc.smallCache {
				r.opts.L2CacheBytes = 2 * rc.cfg.cluster
				r.opts.RefcountCacheBytes = rc.cfg.cluster
			}
			r.opts.Journal = rc.prep == "journal"
			ref, err := os.OpenFile(r.refPath, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			r.ref = ref
			defer ref.Close()
			r.open()
			defer func() {
				if r.img != nil {
					r.img.Close()
				}
			}()
			r.whole("initial content")
			n := rdOps(rc.ops)
			for r.step = 0; r.step < n; r.step++ {
				r.stepOnce()
				if r.step%300 == 299 {
					r.whole("periodic whole-image compare")
				}
			}
			r.whole("final whole-image compare")
			if err := r.img.Close(); err != nil {
				r.fatalf("Close: %v", err)
			}
			r.img = nil
			r.note("qemu-img check")
			if c := qemutest.Check(t, r.path, "qcow2", ""); !c.Clean() {
				r.fatalf("qemu-img check is not clean: %s", c.Output)
			}
			if info := qemutest.Info(t, r.path, "qcow2"); info.VirtualSize != r.size {
				r.fatalf("qemu-img info: virtual size %d, want %d", info.VirtualSize, r.size)
			}
			if same, msg := qemutest.Compare(t, r.path, "qcow2", r.refPath, "raw", false); !same {
				r.fatalf("qemu-img compare with the reference: %s", msg)
			}
			if rc.prep == "snapshot" {
				after := filepath.Join(r.dir, "s1.after.raw")
				qemutest.ConvertSnapshotToRaw(t, r.path, "s1", after)
				// After a grow, qemu-img convert -l outputs the active
				// layer's size: the snapshot then reads zero-padded.
				want, err := os.ReadFile(snapRaw)
				if err != nil {
					t.Fatal(err)
				}
				got, err := os.ReadFile(after)
				if err != nil {
					t.Fatal(err)
				}
				if int64(len(got)) == r.size && len(got) > len(want) {
					want = append(want, make([]byte, len(got)-len(want))...)
				}
				if d := qemutest.DiffBytes(want, got, 0); d != "" {
					r.fatalf("snapshot s1 changed under random ops on the active layer: %s", d)
				}
			}
		})
	}
}

// TestRandomDiffConcurrent: 4 goroutines write disjoint regions (and
// verify their own region), 2 goroutines read (a static region they
// verify, and anywhere), and one flushes, all on one open image. In the
// unaligned variants the region boundaries fall inside clusters, so two
// writers allocate or copy-on-write the same cluster at the same time.
func TestRandomDiffConcurrent(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	t.Parallel()
	for _, v := range []struct {
		name       string
		seed       int64
		cfg        iopConfig
		backing    string
		unaligned  bool
		smallCache bool
	}{
		{"v3-c64K-rb16-aligned", 101, iopConfig{compat: "1.1", cluster: 64 << 10, rbits: 16}, "", false, false},
		{"v3-c4K-rb1-lazy-qcow2backing-unaligned", 102, iopConfig{compat: "1.1", cluster: 4 << 10, rbits: 1, lazy: true}, "qcow2", true, false},
		{"v2-c64K-rb16-rawbacking-unaligned-smallcache", 103, iopConfig{compat: "0.10", cluster: 64 << 10, rbits: 16}, "raw", true, true},
		{"v3-c512-rb64-unaligned-smallcache", 104, iopConfig{compat: "1.1", cluster: 512, rbits: 64}, "", true, true},
		{"v3-c64K-rb16-extl2-rawbacking-unaligned", 105, iopConfig{compat: "1.1", cluster: 64 << 10, rbits: 16, ext: true}, "raw", true, false},
	} {
		t.Run(v.name, func(t *testing.T) {
			t.Parallel()
			const size = 16 << 20
			rc := rdConfig{name: v.name, cfg: v.cfg, backing: v.backing, size: size, maxSize: size}
			r := &rdRun{t: t, rc: rc, dir: t.TempDir(), size: size}
			r.seed = rdSeed(t, v.seed)
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("reproduce (timing-dependent): QCOW2_SEED=%d go test -run 'TestRandomDiffConcurrent/%s$' ./pkg/qcow2", r.seed, v.name)
				}
			})
			r.rng = rand.New(rand.NewSource(r.seed))
			r.path = filepath.Join(r.dir, "top.qcow2")
			r.refPath = filepath.Join(r.dir, "ref.raw")
			bname, bfmt := r.makeBacking()
			discardKeeps := v.cfg.v2() && bname != ""
			co := v.cfg.engine(size)
			co.BackingFile, co.BackingFormat = bname, bfmt
			if err := qcow2.Create(r.path, co); err != nil {
				t.Fatalf("Create: %v", err)
			}
			if v.smallCache {
				r.opts.L2CacheBytes = 2 * v.cfg.cluster
				r.opts.RefcountCacheBytes = v.cfg.cluster
			}
			ref, err := os.OpenFile(r.refPath, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer ref.Close()
			r.ref = ref
			r.open()
			img := r.img
			defer img.Close()

			// Regions: [0, bounds[0]) is static (written once now), then
			// four writer regions.
			var bounds [5]int64
			for i := range bounds {
				bounds[i] = (2 << 20) + int64(i)*(7<<19) // 2 MiB + i*3.5 MiB
				if v.unaligned && i < 4 {
					bounds[i] += 512 * int64(2*i+1)
				}
			}
			bounds[4] = size
			static := make([]byte, bounds[0])
			r.rng.Read(static)
			if _, err := img.WriteAt(static, 0); err != nil {
				t.Fatal(err)
			}
			if _, err := ref.WriteAt(static, 0); err != nil {
				t.Fatal(err)
			}

			var (
				stop     atomic.Bool
				errOnce  sync.Once
				firstErr error
			)
			fail := func(format string, args ...any) {
				errOnce.Do(func() { firstErr = fmt.Errorf(format, args...) })
				stop.Store(true)
			}
			var writers, others sync.WaitGroup
			for w := 0; w < 4; w++ {
				lo, hi := bounds[w], bounds[w+1]
				rng := rand.New(rand.NewSource(r.seed*31 + int64(w)))
				writers.Add(1)
				go func() {
					defer writers.Done()
					cl := v.cfg.cluster
					got, want := make([]byte, 1<<20+2*cl), make([]byte, 1<<20+2*cl)
					verify := func(op string, off, n int64) bool {
						a, b := max(lo, off-cl), min(hi, off+n+cl)
						if _, err := img.ReadAt(got[:b-a], a); err != nil {
							fail("writer %d: after %s: ReadAt(%d, %d): %v", w, op, a, b-a, err)
							return false
						}
						if _, err := ref.ReadAt(want[:b-a], a); err != nil {
							fail("reference: %v", err)
							return false
						}
						if d := qemutest.DiffBytes(want[:b-a], got[:b-a], a); d != "" {
							fail("writer %d region [%d, %d): after %s: %s", w, lo, hi, op, d)
							return false
						}
						return true
					}
					for i := 0; i < rdOps(700) && !stop.Load(); i++ {
						var off, n int64
						switch rng.Intn(4) {
						case 0: // at a region edge (shared clusters when unaligned)
							n = 1 + rng.Int63n(2*cl)
							if rng.Intn(2) == 0 {
								off = lo
							} else {
								off = hi - n
							}
						case 1:
							n = cl * (1 + rng.Int63n(4))
							off = lo + rng.Int63n(hi-lo-n)
						default:
							n = 1 + rng.Int63n(min(64<<10, 3*cl))
							off = lo + rng.Int63n(hi-lo-n)
						}
						n = min(n, hi-off)
						var op string
						switch k := rng.Intn(10); {
						case k < 6:
							p := make([]byte, n)
							rng.Read(p)
							op = fmt.Sprintf("WriteAt(off=%d, len=%d)", off, n)
							if _, err := img.WriteAt(p, off); err != nil {
								fail("writer %d: %s: %v", w, op, err)
								return
							}
							ref.WriteAt(p, off)
						case k < 8:
							unmap := rng.Intn(2) == 0
							op = fmt.Sprintf("WriteZeroes(off=%d, len=%d, unmap=%v)", off, n, unmap)
							if err := img.WriteZeroes(off, n, unmap); err != nil {
								fail("writer %d: %s: %v", w, op, err)
								return
							}
							ref.WriteAt(make([]byte, n), off)
						case k < 9:
							op = fmt.Sprintf("Discard(off=%d, len=%d)", off, n)
							if err := img.Discard(off, n); err != nil {
								fail("writer %d: %s: %v", w, op, err)
								return
							}
							if !discardKeeps {
								ref.WriteAt(make([]byte, n), off)
							}
						default:
							op = "read"
						}
						if !verify(op, off, n) {
							return
						}
					}
				}()
			}
			for rd := 0; rd < 2; rd++ {
				rng := rand.New(rand.NewSource(r.seed*37 + int64(rd)))
				others.Add(1)
				go func() {
					defer others.Done()
					buf := make([]byte, 256<<10)
					for !stop.Load() {
						// The static region, verified.
						n := 1 + rng.Int63n(int64(len(buf)))
						off := rng.Int63n(bounds[0] - n + 1)
						if rng.Intn(4) == 0 { // up to its very end
							off = bounds[0] - n
						}
						if _, err := img.ReadAt(buf[:n], off); err != nil {
							fail("reader %d: ReadAt(%d, %d): %v", rd, off, n, err)
							return
						}
						if d := qemutest.DiffBytes(static[off:off+n], buf[:n], off); d != "" {
							fail("reader %d: static region changed under concurrent writes: %s", rd, d)
							return
						}
						// Anywhere: must not fail.
						n = 1 + rng.Int63n(int64(len(buf)))
						off = rng.Int63n(size - n + 1)
						if m, err := img.ReadAt(buf[:n], off); err != nil || int64(m) != n {
							fail("reader %d: ReadAt(%d, %d) = %d, %v", rd, off, n, m, err)
							return
						}
					}
				}()
			}
			others.Add(1)
			go func() {
				defer others.Done()
				for !stop.Load() {
					if err := img.Flush(); err != nil {
						fail("Flush: %v", err)
						return
					}
					time.Sleep(2 * time.Millisecond)
				}
			}()
			writers.Wait()
			stop.Store(true)
			others.Wait()
			if firstErr != nil {
				t.Fatalf("seed %d: %v", r.seed, firstErr)
			}
			r.whole("whole-image compare after the concurrent phase")
			if err := img.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if c := qemutest.Check(t, r.path, "qcow2", ""); !c.Clean() {
				t.Fatalf("seed %d: qemu-img check is not clean: %s", r.seed, c.Output)
			}
			if same, msg := qemutest.Compare(t, r.path, "qcow2", r.refPath, "raw", false); !same {
				t.Fatalf("seed %d: qemu-img compare with the reference: %s", r.seed, msg)
			}
		})
	}
}
