package qcow2_test

// Benchmarks of the engine against a raw file on the same disk, measured
// in the same run (DESIGN.md, test layer 9). Each benchmark has a raw
// baseline at the same offsets, so the interesting figure is the ratio
// (scripts/bench-ratios.sh prints it; docs/benchmarks.md has results):
//
//	BenchmarkRead/<pattern>/raw           os.File.ReadAt on a written raw file
//	BenchmarkRead/<pattern>/qcow2-falloc  a preallocated (falloc) image, written once
//	BenchmarkRead/<pattern>/qcow2-sparse  a sparse image, written once in order
//	BenchmarkWrite/<pattern>/raw          os.File.WriteAt into a fallocated raw file
//	BenchmarkWrite/<pattern>/qcow2-falloc in-place writes into a falloc image
//	BenchmarkWrite/<pattern>/raw-sparse   os.File.WriteAt into a fresh sparse file
//	BenchmarkWrite/<pattern>/qcow2-sparse allocating writes into a fresh image
//	BenchmarkWrite/<pattern>/qcow2-sparse-lazy  the same with lazy_refcounts=on
//	BenchmarkWrite/<pattern>/qcow2-overlay allocating writes into a fresh overlay
//	                                      over a fully written raw base: every
//	                                      write copies on write from the base
//	BenchmarkWrite/<pattern>/raw-par16, qcow2-par16-overlay  the same with
//	                                      16 writes in flight at once (as an
//	                                      NBD client at queue depth 16); one
//	                                      op is a batch of 16, so compare MB/s
//
// with <pattern> one of 4K-random and 1M-sequential. Every write of the
// qcow2-sparse benchmarks allocates (4K-random writes each land in a
// cluster not written before); when the image is full it is replaced by a
// fresh one, and raw-sparse is reset at the same points, with the timer
// stopped. Files live in a temporary directory on the real disk (TMPDIR;
// the benchmark logs the filesystem), images use the default 64 KiB
// clusters, and QCOW2_BENCH_SIZE (bytes, or with a K/M/G suffix) overrides
// the 1 GiB size.
//
// With QCOW2_BENCH_IOSTATS=1 the qcow2 variants also report what the engine
// asked of its file per operation: preads/op, pwrites/op, syncs/op,
// punches/op, and the microseconds spent in pwrite and in sync (off-CPU
// time a CPU profile does not show).

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

const benchDefaultSize = 1 << 30

// benchPatterns are the I/O patterns: block size and whether offsets are
// random (4K aligned) or sequential.
var benchPatterns = []struct {
	name   string
	bs     int64
	random bool
}{
	{"4K-random", 4 << 10, true},
	{"1M-sequential", 1 << 20, false},
}

func benchSize(b *testing.B) int64 {
	s := os.Getenv("QCOW2_BENCH_SIZE")
	if s == "" {
		return benchDefaultSize
	}
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "K"):
		mult = 1 << 10
	case strings.HasSuffix(s, "M"):
		mult = 1 << 20
	case strings.HasSuffix(s, "G"):
		mult = 1 << 30
	}
	n, err := strconv.ParseInt(strings.TrimRight(s, "KMG"), 10, 64)
	if err != nil || n <= 0 || n*mult < 64<<20 || (n*mult)%(1<<20) != 0 {
		b.Fatalf("QCOW2_BENCH_SIZE=%q: want a whole number of MiB, at least 64M", s)
	}
	return n * mult
}

// benchDir returns a temporary directory and logs what filesystem it is on:
// numbers from tmpfs say nothing about a disk.
func benchDir(b *testing.B) string {
	dir := b.TempDir()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err == nil && st.Type == unix.TMPFS_MAGIC {
		b.Logf("warning: %s is on tmpfs; set TMPDIR to a directory on a disk", dir)
	}
	return dir
}

// benchData returns n bytes of incompressible, non-zero data.
func benchData(n int64) []byte {
	r := rand.New(rand.NewPCG(1, 2))
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(r.IntN(255) + 1)
	}
	return p
}

// benchOffsets returns the offsets a pattern visits in an area of size
// bytes. Random offsets of a qcow2-sparse run must each hit a cluster not
// written before: they are a permutation of the 64 KiB clusters, each with
// a random 4K slot inside.
func benchOffsets(size, bs int64, random bool) []int64 {
	if !random {
		offs := make([]int64, size/bs)
		for i := range offs {
			offs[i] = int64(i) * bs
		}
		return offs
	}
	const cluster = 64 << 10
	r := rand.New(rand.NewPCG(3, 4))
	perm := r.Perm(int(size / cluster))
	offs := make([]int64, len(perm))
	for i, c := range perm {
		offs[i] = int64(c)*cluster + r.Int64N(cluster/bs)*bs
	}
	return offs
}

// benchDisk is what a benchmark reads and writes.
type benchDisk interface {
	io.ReaderAt
	io.WriterAt
	Close() error
}

// benchIOStats counts what an image asks of its file, by kind of call.
type benchIOStats struct {
	paused bool
	n      [5]int64
	dur    [5]time.Duration
}

const (
	statRead = iota
	statWrite
	statSync
	statPunch
	statOther
)

func (s *benchIOStats) add(kind int, start time.Time) {
	if s == nil || s.paused {
		return
	}
	s.n[kind]++
	s.dur[kind] += time.Since(start)
}

func (s *benchIOStats) report(b *testing.B) {
	if s == nil || b.N == 0 {
		return
	}
	per := func(v int64) float64 { return float64(v) / float64(b.N) }
	b.ReportMetric(per(s.n[statRead]), "preads/op")
	b.ReportMetric(per(s.n[statWrite]), "pwrites/op")
	b.ReportMetric(per(s.dur[statWrite].Microseconds()), "pwrite-µs/op")
	b.ReportMetric(per(s.n[statSync]), "syncs/op")
	b.ReportMetric(per(s.dur[statSync].Microseconds()), "sync-µs/op")
	b.ReportMetric(per(s.n[statPunch]), "punches/op")
}

// benchFile is the qcow2.File under a benchmark image: it counts calls
// into stats (when not nil), and lets a benchmark throw an image away
// without the fdatasync of Close (a synced file is slow to delete on a
// filesystem mounted with discard).
type benchFile struct {
	qcow2.File
	stats   *benchIOStats
	discard bool
}

func (f *benchFile) ReadAt(p []byte, off int64) (int, error) {
	if f.stats != nil {
		defer f.stats.add(statRead, time.Now())
	}
	return f.File.ReadAt(p, off)
}

func (f *benchFile) WriteAt(p []byte, off int64) (int, error) {
	if f.stats != nil {
		defer f.stats.add(statWrite, time.Now())
	}
	return f.File.WriteAt(p, off)
}

func (f *benchFile) Sync() error {
	if f.discard {
		return nil
	}
	if f.stats != nil {
		defer f.stats.add(statSync, time.Now())
	}
	return f.File.Sync()
}

// WriteAtDurable forwards RWF_DSYNC writes (counted as syncs), so that the
// engine takes the same path as on a plain file.
func (f *benchFile) WriteAtDurable(p []byte, off int64) error {
	if f.stats != nil {
		defer f.stats.add(statSync, time.Now())
	}
	if d, ok := f.File.(interface {
		WriteAtDurable([]byte, int64) error
	}); ok {
		return d.WriteAtDurable(p, off)
	}
	if _, err := f.File.WriteAt(p, off); err != nil {
		return err
	}
	return f.File.Sync()
}

// ReadFD forwards the plain file's descriptor, so that the engine reads
// guest data as it does from a plain file, unless reads are being counted.
func (f *benchFile) ReadFD() (int, bool) {
	if r, ok := f.File.(interface{ ReadFD() (int, bool) }); ok && f.stats == nil {
		return r.ReadFD()
	}
	return -1, false
}

// WriteFD forwards the plain file's descriptor likewise, unless writes
// are being counted.
func (f *benchFile) WriteFD() (int, bool) {
	if w, ok := f.File.(interface{ WriteFD() (int, bool) }); ok && f.stats == nil {
		return w.WriteFD()
	}
	return -1, false
}

func (f *benchFile) PunchHole(off, n int64) error {
	if f.stats != nil {
		defer f.stats.add(statPunch, time.Now())
	}
	return f.File.PunchHole(off, n)
}

func (f *benchFile) Truncate(n int64) error {
	if f.stats != nil {
		defer f.stats.add(statOther, time.Now())
	}
	return f.File.Truncate(n)
}

// benchImage is a qcow2 benchmark disk.
type benchImage struct {
	*qcow2.Image
	file *benchFile
}

// benchDiscard closes a disk that is about to be deleted.
func benchDiscard(b *testing.B, d benchDisk) {
	b.Helper()
	if img, ok := d.(*benchImage); ok {
		img.file.discard = true
	}
	if err := d.Close(); err != nil {
		b.Fatal(err)
	}
}

// benchNewStats returns counters when QCOW2_BENCH_IOSTATS=1, nil otherwise.
func benchNewStats(variant string) *benchIOStats {
	if os.Getenv("QCOW2_BENCH_IOSTATS") != "1" || !strings.HasPrefix(variant, "qcow2") {
		return nil
	}
	return &benchIOStats{}
}

// benchCreate makes a disk of one variant at path. fill writes the whole
// disk once, with large writes. A qcow2 disk counts its file's calls into
// stats when stats is not nil.
func benchCreate(b *testing.B, path, variant string, size int64, fill bool, stats *benchIOStats) benchDisk {
	b.Helper()
	var d benchDisk
	switch variant {
	case "raw", "raw-sparse":
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			b.Fatal(err)
		}
		if err := f.Truncate(size); err != nil {
			b.Fatal(err)
		}
		if variant == "raw" {
			if err := unix.Fallocate(int(f.Fd()), 0, 0, size); err != nil {
				b.Fatal(err)
			}
		}
		d = f
	case "qcow2-falloc", "qcow2-sparse", "qcow2-sparse-lazy", "qcow2-overlay", "qcow2-overlay-journal":
		o := qcow2.CreateOptions{Size: size}
		switch variant {
		case "qcow2-falloc":
			o.Preallocation = qcow2.PreallocFalloc
		case "qcow2-sparse-lazy":
			o.LazyRefcounts = true
		case "qcow2-overlay", "qcow2-overlay-journal":
			o = qcow2.CreateOptions{BackingFile: benchBase(b, filepath.Dir(path), size), BackingFormat: "raw"}
		}
		if err := qcow2.Create(path, o); err != nil {
			b.Fatal(err)
		}
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			b.Fatal(err)
		}
		bf := &benchFile{File: qcow2.NewOSFile(f), stats: stats}
		opts := qcow2.Options{}
		if variant == "qcow2-overlay-journal" {
			jf, err := os.OpenFile(qcow2.JournalPath(path), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
			if err != nil {
				b.Fatal(err)
			}
			opts = qcow2.WithJournal(opts, qcow2.NewOSFile(jf), qcow2.HostBoot())
		}
		img, err := qcow2.OpenFile(bf, path, opts)
		if err != nil {
			b.Fatal(err)
		}
		d = &benchImage{img, bf}
	default:
		b.Fatalf("unknown variant %q", variant)
	}
	if stats != nil {
		stats.paused = true
		defer func() { stats.paused = false }()
	}
	if fill {
		const chunk = 8 << 20
		data := benchData(chunk)
		for off := int64(0); off < size; off += chunk {
			if _, err := d.WriteAt(data[:min(chunk, size-off)], off); err != nil {
				b.Fatal(err)
			}
		}
	}
	// Start every benchmark with nothing waiting for writeback.
	benchSync(b, d)
	return d
}

// benchBase returns the name (in dir) of a raw file of size bytes, all
// written with non-zero data, made on first use: the base of the
// qcow2-overlay variants, whose writes must then copy on write.
func benchBase(b *testing.B, dir string, size int64) string {
	b.Helper()
	name := "overlay-base-" + strconv.FormatInt(size, 10) + ".raw"
	path := filepath.Join(dir, name)
	if _, err := os.Stat(path); err == nil {
		return name
	}
	d := benchCreate(b, path, "raw", size, true, nil)
	if err := d.Close(); err != nil {
		b.Fatal(err)
	}
	return name
}

func benchSync(b *testing.B, d benchDisk) {
	b.Helper()
	var err error
	switch d := d.(type) {
	case *os.File:
		err = d.Sync()
	case *benchImage:
		err = d.Flush()
	}
	if err != nil {
		b.Fatal(err)
	}
	unix.Sync()
}

// BenchmarkRead: reads from disks written once.
func BenchmarkRead(b *testing.B) {
	size := benchSize(b)
	dir := benchDir(b)
	disks := map[string]benchDisk{}
	stats := map[string]*benchIOStats{}
	defer func() {
		for _, d := range disks {
			d.Close()
		}
	}()
	for _, pat := range benchPatterns {
		offs := benchOffsets(size, pat.bs, pat.random)
		for _, variant := range []string{"raw", "rawfd", "qcow2-falloc", "qcow2-sparse"} {
			b.Run(pat.name+"/"+variant, func(b *testing.B) {
				kind := variant
				if variant == "rawfd" {
					kind = "raw"
				}
				d := disks[kind]
				st := stats[kind]
				if d == nil {
					// Made on first use, so that -bench can pick one.
					st = benchNewStats(kind)
					d = benchCreate(b, filepath.Join(dir, kind), kind, size, true, st)
					disks[kind], stats[kind] = d, st
				}
				if variant == "rawfd" {
					d = preadDisk{d.(*os.File)}
				}
				if st != nil {
					*st = benchIOStats{}
				}
				buf := make([]byte, pat.bs)
				b.SetBytes(pat.bs)
				i := 0
				for b.Loop() {
					if _, err := d.ReadAt(buf, offs[i]); err != nil {
						b.Fatal(err)
					}
					if i++; i == len(offs) {
						i = 0
					}
				}
				st.report(b)
			})
		}
	}
}

// preadDisk reads a raw file with syscall.Pread on its descriptor, as the
// engine reads guest data (pread.go), without os.File's per-call
// bookkeeping: the rawfd variant, beside the raw baseline, shows how much
// of a 4K read that bookkeeping is.
type preadDisk struct{ *os.File }

func (p preadDisk) ReadAt(b []byte, off int64) (int, error) {
	n, err := syscall.Pread(int(p.Fd()), b, off)
	if err == nil && n < len(b) {
		err = io.EOF
	}
	return n, err
}

func (p preadDisk) Close() error { return nil } // the raw variant's file

// BenchmarkWrite: in-place writes (raw, qcow2-falloc), allocating writes
// (raw-sparse, qcow2-sparse) and copy-on-write allocations (qcow2-overlay),
// each on a disk of its own; the par16 variants keep 16 writes in flight
// (named so that benchratio compares qcow2-par16-overlay with raw-par16).
func BenchmarkWrite(b *testing.B) {
	size := benchSize(b)
	dir := benchDir(b)
	for _, pat := range benchPatterns {
		offs := benchOffsets(size, pat.bs, pat.random)
		for _, variant := range []string{"raw", "qcow2-falloc", "raw-sparse", "qcow2-sparse", "qcow2-sparse-lazy", "qcow2-overlay", "qcow2-overlay-journal", "raw-par16", "qcow2-par16-overlay", "qcow2-par16-overlay-journal"} {
			b.Run(pat.name+"/"+variant, func(b *testing.B) {
				kind, par := variant, 1
				if strings.Contains(variant, "-par16") {
					kind, par = strings.Replace(variant, "-par16", "", 1), 16
				}
				// Allocating variants are replaced by fresh ones when full:
				// every further write would be in place.
				fresh := strings.Contains(kind, "-sparse") || strings.HasPrefix(kind, "qcow2-overlay")
				path := filepath.Join(dir, variant+"-"+pat.name)
				var st *benchIOStats
				if par == 1 {
					st = benchNewStats(kind) // not safe for concurrent use
				}
				d := benchCreate(b, path, kind, size, false, st)
				defer func() {
					if img, ok := d.(*benchImage); ok {
						img.file.discard = true
					}
					d.Close()
					os.Remove(path)
				}()
				data := benchData(pat.bs)
				b.SetBytes(pat.bs * int64(par))
				i := 0
				for b.Loop() {
					if err := benchWriteBatch(d, data, offs[i:i+par]); err != nil {
						b.Fatal(err)
					}
					if i += par; i+par <= len(offs) {
						continue
					}
					i = 0
					if fresh {
						b.StopTimer()
						if st != nil {
							st.paused = true
						}
						benchDiscard(b, d)
						if err := os.Remove(path); err != nil {
							b.Fatal(err)
						}
						d = benchCreate(b, path, kind, size, false, st)
						if st != nil {
							st.paused = false
						}
						b.StartTimer()
					}
				}
				st.report(b)
			})
		}
	}
}

// benchWriteBatch writes data at every offset in offs, all at once.
func benchWriteBatch(d benchDisk, data []byte, offs []int64) error {
	if len(offs) == 1 {
		_, err := d.WriteAt(data, offs[0])
		return err
	}
	errs := make(chan error, len(offs))
	for _, off := range offs {
		go func() {
			_, err := d.WriteAt(data, off)
			errs <- err
		}()
	}
	var first error
	for range offs {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// TestBenchHelpers keeps the offset generator honest: random offsets of an
// allocating run must visit distinct clusters, inside the disk.
func TestBenchHelpers(t *testing.T) {
	const size = 64 << 20
	for _, pat := range benchPatterns {
		offs := benchOffsets(size, pat.bs, pat.random)
		seen := map[int64]bool{}
		for _, o := range offs {
			if o < 0 || o+pat.bs > size || o%pat.bs != 0 {
				t.Fatalf("%s: offset %d", pat.name, o)
			}
			c := o / max(64<<10, pat.bs)
			if seen[c] {
				t.Fatalf("%s: cluster %d visited twice", pat.name, c)
			}
			seen[c] = true
		}
		if want := size / max(64<<10, pat.bs); int64(len(offs)) != want {
			t.Fatalf("%s: %d offsets, want %d", pat.name, len(offs), want)
		}
	}
	if d := benchData(4096); bytes.IndexByte(d, 0) >= 0 {
		t.Fatal("benchData has zero bytes")
	}
}
