package qcow2_test

// Fuzz targets for the two entry points that parse untrusted images
// (DESIGN.md, test layer 5):
//
//   - FuzzOpen: arbitrary bytes opened read-only (reads, Map, Info) and,
//     on a copy, writable (writes, zeroes, discard, resize, flush, close).
//   - FuzzCheck: arbitrary bytes checked with RepairNone and, on a copy,
//     repaired with RepairAll.
//
// Neither may panic, hang, or allocate without bound; read-only operations
// must never write to the file. On top of that each target keeps a few
// invariants that hold for any input: Map covers exactly the range asked
// for and its zero extents read as zeros; an image that checks clean stays
// clean after our writes and reads back what was written; an image that a
// repair reports clean checks clean afterwards and needs no further repair.
//
// Plain `go test` runs the committed seeds in testdata/fuzz/<Target>/ (made
// by qemu-img and qemu-io, plus damaged variants; regenerate them with
// QCOW2_REGEN_CORPUS=1 go test -run TestFuzzCorpusRegen ./pkg/qcow2) and a
// few images made by the engine itself. Fuzz with
//
//	go test -run '^$' -fuzz '^FuzzOpen$' -fuzztime 5m -fuzzminimizetime 50x ./pkg/qcow2
//	go test -run '^$' -fuzz '^FuzzCheck$' -fuzztime 5m -fuzzminimizetime 50x ./pkg/qcow2
//
// (without -fuzzminimizetime the fuzzer spends most of its time minimizing
// new inputs: one input takes about a millisecond). Go's fuzzer reports an
// input that runs for more than 10 s as "hung"; the watchdog here catches
// longer stalls outside fuzzing too.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/bits"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/csi-qcow2/csi-qcow2/internal/qemutest"
	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

const (
	// fuzzMaxInput: larger inputs are skipped (the seeds are a few KiB).
	fuzzMaxInput = 4 << 20
	// fuzzFileCap bounds how far an image file may grow; writes past it
	// fail like a full disk would.
	fuzzFileCap = 64 << 20
	// fuzzAllocLimit bounds what the engine may allocate in one call
	// (the in-memory files' own growth is not counted). The largest
	// legitimate tables (L1 32 MiB, refcount table 8 MiB, snapshot table
	// 64 MiB) need an input that large, so small inputs stay far below.
	fuzzAllocLimit = 128 << 20
	// fuzzTimeLimit: an input still running after this is a hang; the
	// watchdog crashes the process so that the fuzzer keeps the input.
	fuzzTimeLimit = 60 * time.Second

	// Names of the backing files the fuzz targets provide next to the
	// image, so that seeds can name them.
	fuzzBaseQcow2 = "base.qcow2"
	fuzzBaseRaw   = "base.raw"
	fuzzBaseSize  = 64 << 10
)

var (
	errFuzzReadOnly = errors.New("fuzz file: read-only")
	errFuzzFileCap  = errors.New("fuzz file: size limit reached")
	errFuzzClosed   = errors.New("fuzz file: closed")
)

// fuzzFile is a qcow2.File in memory. A read-only one refuses writes and
// records that one was attempted.
type fuzzFile struct {
	b          []byte
	readOnly   bool
	wrote      bool  // a write was attempted on a read-only file
	usedClosed bool  // an operation after Close
	grown      int64 // bytes allocated to grow b (not charged to the engine)
	closed     bool
}

func (m *fuzzFile) ReadAt(p []byte, off int64) (int, error) {
	if m.closed {
		m.usedClosed = true
		return 0, errFuzzClosed
	}
	if off < 0 {
		return 0, fmt.Errorf("fuzz file: negative offset %d", off)
	}
	if off >= int64(len(m.b)) {
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *fuzzFile) writeCheck(off, n int64) error {
	if m.closed {
		m.usedClosed = true
		return errFuzzClosed
	}
	if m.readOnly {
		m.wrote = true
		return errFuzzReadOnly
	}
	if off < 0 || n < 0 {
		return fmt.Errorf("fuzz file: negative offset or length (%d, %d)", off, n)
	}
	if off > fuzzFileCap || n > fuzzFileCap-off {
		return errFuzzFileCap
	}
	return nil
}

func (m *fuzzFile) grow(size int64) {
	if size <= int64(len(m.b)) {
		return
	}
	if size <= int64(cap(m.b)) {
		old := len(m.b)
		m.b = m.b[:size]
		clear(m.b[old:])
		return
	}
	nb := make([]byte, size, max(size, min(2*int64(cap(m.b)), fuzzFileCap)))
	m.grown += int64(cap(nb))
	copy(nb, m.b)
	m.b = nb
}

func (m *fuzzFile) WriteAt(p []byte, off int64) (int, error) {
	if err := m.writeCheck(off, int64(len(p))); err != nil {
		return 0, err
	}
	m.grow(off + int64(len(p)))
	return copy(m.b[off:], p), nil
}

func (m *fuzzFile) Truncate(size int64) error {
	if err := m.writeCheck(0, size); err != nil {
		return err
	}
	if size < int64(len(m.b)) {
		m.b = m.b[:size]
		return nil
	}
	m.grow(size)
	return nil
}

func (m *fuzzFile) PunchHole(off, n int64) error {
	if err := m.writeCheck(off, 0); err != nil {
		return err
	}
	if n < 0 {
		return fmt.Errorf("fuzz file: negative length %d", n)
	}
	if off < int64(len(m.b)) {
		clear(m.b[off:min(off+n, int64(len(m.b)))])
	}
	return nil
}

func (m *fuzzFile) Sync() error {
	if m.closed {
		m.usedClosed = true
		return errFuzzClosed
	}
	return nil
}

func (m *fuzzFile) Size() (int64, error) {
	if m.closed {
		m.usedClosed = true
		return 0, errFuzzClosed
	}
	return int64(len(m.b)), nil
}

func (m *fuzzFile) Close() error {
	if m.closed {
		m.usedClosed = true
		return errFuzzClosed
	}
	m.closed = true
	return nil
}

// fuzzRun accounts for one input: the files it made, what the engine
// allocated in each call, and a watchdog against hangs.
type fuzzRun struct {
	t      *testing.T
	files  []*fuzzFile
	stop   func()
	sample []metrics.Sample
}

func newFuzzRun(t *testing.T, target string) *fuzzRun {
	r := &fuzzRun{t: t, sample: []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}}
	timer := time.AfterFunc(fuzzTimeLimit, func() {
		buf := make([]byte, 1<<20)
		n := runtime.Stack(buf, true)
		panic(fmt.Sprintf("%s: input still running after %v (hang?)\n%s", target, fuzzTimeLimit, buf[:n]))
	})
	r.stop = func() { timer.Stop() }
	return r
}

// file returns a new in-memory file holding data (not copied).
func (r *fuzzRun) file(data []byte, readOnly bool) *fuzzFile {
	f := &fuzzFile{b: data, readOnly: readOnly}
	r.files = append(r.files, f)
	return f
}

func (r *fuzzRun) heapAllocs() int64 {
	metrics.Read(r.sample)
	if r.sample[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	v := int64(r.sample[0].Value.Uint64())
	for _, f := range r.files {
		v -= f.grown
	}
	return v
}

// call runs fn, one use of the engine, and fails the input if the engine
// allocated more than fuzzAllocLimit meanwhile (the files' growth aside).
func (r *fuzzRun) call(what string, fn func()) {
	before := r.heapAllocs()
	fn()
	if n := r.heapAllocs() - before; n > fuzzAllocLimit {
		r.t.Errorf("%s: the engine allocated %d MiB (limit %d MiB)", what, n>>20, fuzzAllocLimit>>20)
	}
}

func (r *fuzzRun) finish() {
	r.stop()
	for _, f := range r.files {
		if f.usedClosed {
			r.t.Errorf("the engine used a file after closing it")
		}
	}
}

// fuzzBackingDir makes a directory holding the backing files seeds name.
func fuzzBackingDir(f *testing.F) string {
	dir := f.TempDir()
	raw := bytes.Repeat([]byte("backing-raw-data"), fuzzBaseSize/16)
	if err := os.WriteFile(filepath.Join(dir, fuzzBaseRaw), raw, 0o444); err != nil {
		f.Fatal(err)
	}
	p := filepath.Join(dir, fuzzBaseQcow2)
	if err := qcow2.Create(p, qcow2.CreateOptions{Size: fuzzBaseSize, ClusterSize: 512}); err != nil {
		f.Fatal(err)
	}
	img, err := qcow2.Open(p, qcow2.Options{})
	if err != nil {
		f.Fatal(err)
	}
	if _, err := img.WriteAt(bytes.Repeat([]byte("B"), 8<<10), 4<<10); err != nil {
		f.Fatal(err)
	}
	if err := img.Close(); err != nil {
		f.Fatal(err)
	}
	return dir
}

// fuzzEngineSeeds adds a few images made by the engine itself, so that the
// targets have seeds even without the committed corpus.
func fuzzEngineSeeds(f *testing.F) {
	for _, o := range []qcow2.CreateOptions{
		{Size: 64 << 10, ClusterSize: 512},
		{Size: 64 << 10, ClusterSize: 512, Compat: "0.10"},
		{Size: 256 << 10, ClusterSize: 4096, RefcountBits: 1},
		{Size: 64 << 10, ClusterSize: 512, RefcountBits: 64, LazyRefcounts: true},
		{Size: 128 << 10, ClusterSize: 16 << 10, ExtendedL2: true},
	} {
		m := &fuzzFile{}
		if err := qcow2.CreateFile(m, "seed.qcow2", o); err != nil {
			f.Fatal(err)
		}
		img, err := qcow2.OpenFile(m, "seed.qcow2", qcow2.Options{})
		if err != nil {
			f.Fatal(err)
		}
		for i, off := range []int64{0, 3 * o.ClusterSize / 2, o.Size - 1024} {
			if _, err := img.WriteAt(bytes.Repeat([]byte{'a' + byte(i)}, 1024), off); err != nil {
				f.Fatal(err)
			}
		}
		if err := img.WriteZeroes(4*o.ClusterSize, 2*o.ClusterSize, false); err != nil {
			f.Fatal(err)
		}
		if err := img.Close(); err != nil {
			f.Fatal(err)
		}
		f.Add(m.b)
	}
}

func FuzzOpen(f *testing.F) {
	dir := fuzzBackingDir(f)
	fuzzEngineSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > fuzzMaxInput {
			t.Skip("input too large")
		}
		r := newFuzzRun(t, "FuzzOpen")
		defer r.finish()
		name := filepath.Join(dir, "fuzz.qcow2")

		ro := r.file(data, true)
		r.call("read-only open and reads", func() {
			if img, err := qcow2.OpenFile(ro, name, qcow2.Options{ReadOnly: true}); err == nil {
				fuzzExerciseRead(t, img, crc32.ChecksumIEEE(data))
				_ = img.Close()
			}
		})
		if ro.wrote {
			t.Errorf("opening read-only wrote to the image file")
		}

		var clean bool
		r.call("check", func() {
			res, err := qcow2.CheckFile(r.file(bytes.Clone(data), true), qcow2.CheckOptions{})
			clean = err == nil && res.ExitCode() == 0
		})
		rw := r.file(bytes.Clone(data), false)
		var w *fuzzWindow
		var opened bool
		var cerr error
		r.call("writable open, writes and close", func() {
			img, err := qcow2.OpenFile(rw, name, qcow2.Options{})
			if err != nil {
				return
			}
			opened = true
			w = fuzzExerciseWrite(t, img, clean)
			cerr = img.Close()
		})
		if !opened || !clean {
			return
		}
		if cerr != nil {
			t.Errorf("Close of an image that checked clean: %v", cerr)
			return
		}
		if w == nil {
			return // an operation failed: already reported
		}
		// The image checked clean and every operation succeeded: it must
		// still check clean, and read back what was written.
		after := bytes.Clone(rw.b)
		r.call("check after writes", func() {
			res, err := qcow2.CheckFile(r.file(bytes.Clone(after), true), qcow2.CheckOptions{})
			if err != nil || !fuzzCleanAfterWrites(res) {
				t.Errorf("the image checked clean before our writes, not after: %v %s", err, fuzzCheckSummary(res))
			}
		})
		r.call("reopen", func() {
			img, err := qcow2.OpenFile(r.file(after, true), name, qcow2.Options{ReadOnly: true})
			if err != nil {
				t.Errorf("reopening after writes: %v", err)
				return
			}
			w.verify(t, img, "after close and reopen")
			_ = img.Close()
		})
	})
}

// fuzzResizeRefusedForBitmaps reports whether a failed Resize was refused
// because of an inconsistent persistent bitmap, as QEMU refuses it.
func fuzzResizeRefusedForBitmaps(img *qcow2.Image, err error) bool {
	bms, _ := img.Bitmaps()
	return errors.Is(err, qcow2.ErrUnsupported) && len(bms) > 0
}

// fuzzCleanAfterWrites reports whether res, the check of an image that
// checked clean before the engine wrote to it, is acceptable: clean, or
// with nothing but findings that QEMU's own writes leave too.
func fuzzCleanAfterWrites(res *qcow2.CheckResult) bool {
	if res.ExitCode() == 0 {
		return true
	}
	if res.CheckErrors != 0 || res.Leaks > 0 {
		return false
	}
	for _, m := range res.Messages {
		switch {
		case strings.HasPrefix(m, "ERROR OFLAG_COPIED data cluster:") && strings.HasSuffix(m, " refcount=1"):
			// Two L2 entries of the active table shared a cluster
			// (refcount 2, no OFLAG_COPIED); a write moved one of them
			// away. QEMU leaves the other entry the same way.
		default:
			return false
		}
	}
	return true
}

func fuzzCheckSummary(res *qcow2.CheckResult) string {
	if res == nil {
		return "(no result)"
	}
	msgs := res.Messages
	if len(msgs) > 10 {
		msgs = msgs[:10]
	}
	return fmt.Sprintf("exit=%d errors=%d corruptions=%d leaks=%d fixed=%d/%d messages=%q",
		res.ExitCode(), res.CheckErrors, res.Corruptions, res.Leaks, res.CorruptionsFixed, res.LeaksFixed, msgs)
}

// fuzzExerciseRead reads ranges, maps and describes an open image; seed
// varies the offsets per input.
func fuzzExerciseRead(t *testing.T, img *qcow2.Image, seed uint32) {
	size, cs := img.Size(), img.ClusterSize()
	_ = img.Info()
	_ = img.Header()
	_ = img.Backing()
	if size < 0 {
		t.Fatalf("negative size %d", size)
	}
	if cs < 512 || cs > 2<<20 || cs&(cs-1) != 0 {
		t.Fatalf("cluster size %d", cs)
	}
	const maxRead = 128 << 10
	mid := int64(0)
	if size > 0 {
		mid = int64(seed) % size
	}
	for _, rg := range [][2]int64{
		{0, min(size, maxRead)},
		{size - min(size, 4096), min(size, 4096)},
		{mid, min(size-mid, 2*cs+1000, maxRead)},
		{min(cs-100, size), min(200, max(size-cs+100, 0))},
	} {
		if rg[0] < 0 || rg[1] <= 0 {
			continue
		}
		buf := make([]byte, rg[1])
		if n, err := img.ReadAt(buf, rg[0]); err == nil && n != len(buf) {
			t.Errorf("ReadAt(%d, +%d) = %d bytes and no error", rg[0], rg[1], n)
		}
	}
	if _, err := img.ReadAt(make([]byte, 1), size); err == nil {
		t.Errorf("ReadAt at the virtual size (%d) did not fail", size)
	}
	if _, err := img.ReadAt(make([]byte, 1), -1); err == nil {
		t.Errorf("ReadAt at -1 did not fail")
	}
	// Map walks cluster by cluster: keep the windows small.
	window := min(size, 4096*cs, 8<<20)
	zeroBudget := int64(256 << 10)
	for _, rg := range [][2]int64{{0, window}, {size - min(size, 1<<20), min(size, 1<<20)}} {
		ext, err := img.Map(rg[0], rg[1])
		if err != nil {
			continue
		}
		pos := rg[0]
		for i, e := range ext {
			if e.Start != pos || e.Length <= 0 {
				t.Errorf("Map(%d, +%d): extent %d is %+v, want one starting at %d", rg[0], rg[1], i, e, pos)
				return
			}
			pos += e.Length
			if e.Zero && zeroBudget > 0 {
				n := min(e.Length, zeroBudget, 64<<10)
				zeroBudget -= n
				buf := make([]byte, n)
				if _, err := img.ReadAt(buf, e.Start); err == nil {
					if d := qemutest.DiffBytes(make([]byte, n), buf, e.Start); d != "" {
						t.Errorf("Map says [%d, +%d) reads as zeros, but it does not: %s", e.Start, e.Length, d)
					}
				}
			}
		}
		if pos != rg[0]+rg[1] {
			t.Errorf("Map(%d, +%d) covers up to %d", rg[0], rg[1], pos)
		}
	}
}

// fuzzHasCompressed reports whether [off, off+n) maps to compressed
// clusters (or cannot be mapped).
func fuzzHasCompressed(img *qcow2.Image, off, n int64) bool {
	ext, err := img.Map(off, n)
	if err != nil {
		return true
	}
	for _, e := range ext {
		if e.Compressed {
			return true
		}
	}
	return false
}

// fuzzMapsOwnData reports whether the image itself (not its backing
// chain) maps data in [off, off+n).
func fuzzMapsOwnData(img *qcow2.Image, off, n int64) bool {
	if n <= 0 {
		return false
	}
	ext, err := img.Map(off, n)
	if err != nil {
		return true
	}
	for _, e := range ext {
		if e.Depth == 0 && e.Present && !e.Zero {
			return true
		}
	}
	return false
}

// fuzzWindow is the expected content of the first bytes of an image after
// fuzzExerciseWrite, and of the tail Resize added.
type fuzzWindow struct {
	want    []byte
	oldSize int64 // the size before Resize; [oldSize, zeroEnd) reads zeros
	newSize int64
	zeroEnd int64
}

func (w *fuzzWindow) verify(t *testing.T, img *qcow2.Image, when string) {
	t.Helper()
	if got := img.Size(); got != w.newSize {
		t.Errorf("%s: size %d, want %d", when, got, w.newSize)
		return
	}
	got := make([]byte, len(w.want))
	if _, err := img.ReadAt(got, 0); err != nil {
		t.Errorf("%s: reading back: %v", when, err)
		return
	}
	if d := qemutest.DiffBytes(w.want, got, 0); d != "" {
		t.Errorf("%s: read back differs: %s", when, d)
	}
	if w.zeroEnd > w.oldSize {
		tail := make([]byte, w.zeroEnd-w.oldSize)
		if _, err := img.ReadAt(tail, w.oldSize); err != nil {
			t.Errorf("%s: reading the grown tail: %v", when, err)
		} else if d := qemutest.DiffBytes(make([]byte, len(tail)), tail, w.oldSize); d != "" {
			t.Errorf("%s: the grown tail is not zero: %s", when, d)
		}
	}
}

// fuzzExerciseWrite writes, zeroes, discards, flushes and grows an image
// opened writable. When clean is set (the image checked clean) an operation
// that fails is an error, and the image must read back what was written;
// the expected content is returned if every operation succeeded.
func fuzzExerciseWrite(t *testing.T, img *qcow2.Image, clean bool) *fuzzWindow {
	size, cs := img.Size(), img.ClusterSize()
	win := min(size, 8*cs)
	if fuzzHasCompressed(img, 0, win) || fuzzHasCompressed(img, size-min(size, cs), min(size, cs)) {
		// Check (like qemu-img check) looks at metadata only: a clean
		// image may hold compressed clusters that do not decompress, and
		// reading or partly overwriting them fails, in QEMU too (Resize
		// rewrites the tail of the last cluster).
		clean = false
	}
	ok := true
	fail := func(what string, err error) {
		if clean {
			t.Errorf("%s on an image that checked clean: %v", what, err)
		}
		ok = false
	}
	want := make([]byte, win)
	if _, err := img.ReadAt(want, 0); err != nil {
		fail("ReadAt", err)
	}
	discardZeroes := !(img.Header().Version < 3 && img.Backing() != nil)
	type op struct {
		kind string // "write", "zero", "zero-unmap", "discard"
		off  int64
		n    int64
	}
	ops := []op{
		{"write", 0, cs + cs/2},
		{"write", win/3 + 7, cs},
		{"zero", cs / 2, cs + 512},
		{"zero-unmap", 3 * cs, 2 * cs},
		{"discard", 5*cs + 100, cs},
		{"write", 6*cs - 100, 300},
		{"write", 4 * cs, cs},
	}
	for i, o := range ops {
		off := min(o.off, win)
		n := min(o.n, win-off)
		if n <= 0 {
			continue
		}
		var err error
		switch o.kind {
		case "write":
			p := bytes.Repeat([]byte{byte('A' + i)}, int(n))
			_, err = img.WriteAt(p, off)
			copy(want[off:], p)
		case "zero", "zero-unmap":
			err = img.WriteZeroes(off, n, o.kind == "zero-unmap")
			clear(want[off : off+n])
		case "discard":
			err = img.Discard(off, n)
			if discardZeroes {
				clear(want[off : off+n])
			}
		}
		if err != nil {
			fail(fmt.Sprintf("%s(%d, +%d)", o.kind, off, n), err)
		}
	}
	if err := img.Flush(); err != nil {
		fail("Flush", err)
	}
	w := &fuzzWindow{want: want, oldSize: size, newSize: size, zeroEnd: size}
	if ok && clean {
		w.verify(t, img, "after writes")
	}
	if size%512 == 0 && size <= 1<<40 {
		grow := min(cs, 64<<10)
		if err := img.Resize(size + grow); err != nil {
			if !fuzzResizeRefusedForBitmaps(img, err) {
				fail("Resize", err)
			}
		} else {
			w.newSize = size + grow
			// The engine zeroes what is left of the old last cluster.
			// Clusters past it read what their L2 entries say: an image
			// may map clusters beyond its end, and growing it shows them,
			// in QEMU too.
			w.zeroEnd = min(w.newSize, (size+cs-1)/cs*cs)
			if !fuzzMapsOwnData(img, w.zeroEnd, w.newSize-w.zeroEnd) {
				w.zeroEnd = w.newSize
			}
		}
		if ok && clean {
			w.verify(t, img, "after Resize")
		}
	}
	if !ok {
		return nil
	}
	return w
}

func FuzzCheck(f *testing.F) {
	dir := fuzzBackingDir(f)
	fuzzEngineSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > fuzzMaxInput {
			t.Skip("input too large")
		}
		r := newFuzzRun(t, "FuzzCheck")
		defer r.finish()

		ro := r.file(data, true)
		var res *qcow2.CheckResult
		var err error
		r.call("CheckFile RepairNone", func() { res, err = qcow2.CheckFile(ro, qcow2.CheckOptions{Repair: qcow2.RepairNone}) })
		if ro.wrote {
			t.Errorf("CheckFile with RepairNone wrote to the file")
		}
		cleanBefore := false
		if err == nil {
			fuzzCheckResultSane(t, "RepairNone", res)
			cleanBefore = res.ExitCode() == 0
		}

		rw := r.file(bytes.Clone(data), false)
		r.call("CheckFile RepairAll", func() { res, err = qcow2.CheckFile(rw, qcow2.CheckOptions{Repair: qcow2.RepairAll}) })
		if err != nil {
			return
		}
		fuzzCheckResultSane(t, "RepairAll", res)
		if cleanBefore && (res.CorruptionsFixed > 0 || res.LeaksFixed > 0 || res.ExitCode() != 0) {
			t.Errorf("a clean image was repaired: %s", fuzzCheckSummary(res))
		}
		if res.ExitCode() != 0 {
			return
		}
		// Reported clean after the repair: a fresh check agrees, a second
		// repair has nothing to do, and the engine can write to it.
		repaired := bytes.Clone(rw.b)
		var again *qcow2.CheckResult
		r.call("check after RepairAll", func() {
			again, err = qcow2.CheckFile(r.file(bytes.Clone(repaired), true), qcow2.CheckOptions{})
		})
		if err != nil || again.ExitCode() != 0 {
			t.Errorf("RepairAll reported %s, but a new check finds %v %s", fuzzCheckSummary(res), err, fuzzCheckSummary(again))
			return
		}
		r.call("second RepairAll", func() {
			again, err = qcow2.CheckFile(r.file(bytes.Clone(repaired), false), qcow2.CheckOptions{Repair: qcow2.RepairAll})
		})
		if err != nil || again.CorruptionsFixed > 0 || again.LeaksFixed > 0 {
			t.Errorf("a second RepairAll still fixes things: %v %s", err, fuzzCheckSummary(again))
		}
		wf := r.file(bytes.Clone(repaired), false)
		var werr error
		opened := false
		r.call("write to the repaired image", func() {
			img, err := qcow2.OpenFile(wf, filepath.Join(dir, "fuzz.qcow2"), qcow2.Options{})
			if err != nil {
				return
			}
			n := min(img.Size(), 2*img.ClusterSize())
			if fuzzHasCompressed(img, 0, n) {
				_ = img.Close() // see fuzzExerciseWrite
				return
			}
			opened = true
			if n > 0 {
				_, werr = img.WriteAt(bytes.Repeat([]byte("w"), int(n)), 0)
			}
			if cerr := img.Close(); werr == nil {
				werr = cerr
			}
		})
		if !opened {
			return
		}
		if werr != nil {
			t.Errorf("writing to a repaired image: %v", werr)
			return
		}
		r.call("check after the write", func() {
			again, err = qcow2.CheckFile(r.file(bytes.Clone(wf.b), true), qcow2.CheckOptions{})
		})
		if err != nil || !fuzzCleanAfterWrites(again) {
			t.Errorf("a repaired image no longer checks clean after a write: %v %s", err, fuzzCheckSummary(again))
		}
	})
}

func fuzzCheckResultSane(t *testing.T, mode string, res *qcow2.CheckResult) {
	t.Helper()
	if res == nil {
		t.Errorf("%s: nil result and no error", mode)
		return
	}
	if res.CheckErrors < 0 || res.Corruptions < 0 || res.Leaks < 0 || res.CorruptionsFixed < 0 || res.LeaksFixed < 0 ||
		res.TotalClusters < 0 || res.AllocatedClusters < 0 || res.ImageEndOffset < 0 {
		t.Errorf("%s: negative counter in %+v", mode, *res)
	}
	if c := res.ExitCode(); c < 0 || c > 3 {
		t.Errorf("%s: exit code %d", mode, c)
	}
	if len(res.Messages) > 100000 {
		t.Errorf("%s: %d messages", mode, len(res.Messages))
	}
}

// ---- Seed corpus ----

// TestFuzzCorpusRegen rewrites the seed-* files of testdata/fuzz/FuzzOpen
// and testdata/fuzz/FuzzCheck from images made by qemu-img and qemu-io and
// from damaged copies of them. Other files there (minimized crashers kept
// as regression inputs) are left alone.
func TestFuzzCorpusRegen(t *testing.T) {
	if os.Getenv("QCOW2_REGEN_CORPUS") != "1" {
		t.Skip("set QCOW2_REGEN_CORPUS=1 to regenerate the fuzz seed corpus with qemu-img and qemu-io")
	}
	testtools.Need(t, "qemu-img", "qemu-io")
	root, err := filepath.Abs(filepath.Join("testdata", "fuzz"))
	if err != nil {
		t.Fatal(err)
	}
	seeds := fuzzMakeSeeds(t)
	total := 0
	for _, target := range []string{"FuzzOpen", "FuzzCheck"} {
		out := filepath.Join(root, target)
		if err := os.MkdirAll(out, 0o755); err != nil {
			t.Fatal(err)
		}
		old, _ := filepath.Glob(filepath.Join(out, "seed-*"))
		for _, p := range old {
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
		}
		for _, s := range seeds {
			if target == "FuzzCheck" && s.openOnly {
				continue
			}
			enc := "go test fuzz v1\n[]byte(" + strconv.Quote(string(s.data)) + ")\n"
			if err := os.WriteFile(filepath.Join(out, "seed-"+s.name), []byte(enc), 0o644); err != nil {
				t.Fatal(err)
			}
			total += len(enc)
		}
	}
	t.Logf("wrote %d seeds, %d KiB", len(seeds), total>>10)
	if total > 2<<20 {
		t.Errorf("the corpus is %d KiB; keep it under 2 MiB", total>>10)
	}
}

type fuzzSeed struct {
	name     string
	data     []byte
	openOnly bool // only interesting to FuzzOpen (backing files, policy)
}

// fuzzImageGeometry is what the damage functions need to find tables.
type fuzzImageGeometry struct {
	cs     int64
	l1Off  int64
	rtOff  int64
	l2Off  int64 // first L2 table (L1[0]); 0 if none
	rbOff  int64 // first refcount block
	snapOf int64
}

func fuzzGeometry(t *testing.T, b []byte) fuzzImageGeometry {
	t.Helper()
	be := binary.BigEndian
	g := fuzzImageGeometry{
		cs:     int64(1) << be.Uint32(b[20:]),
		l1Off:  int64(be.Uint64(b[40:])),
		rtOff:  int64(be.Uint64(b[48:])),
		snapOf: int64(be.Uint64(b[64:])),
	}
	g.l2Off = int64(be.Uint64(b[g.l1Off:]) & 0x00fffffffffffe00)
	g.rbOff = int64(be.Uint64(b[g.rtOff:]) &^ 0x1ff)
	return g
}

func fuzzMakeSeeds(t *testing.T) []fuzzSeed {
	dir := t.TempDir()
	// Relative names (data_file=) resolve here, and stay relative in the
	// seeds, which makes them the same on every run.
	t.Chdir(dir)
	// The backing files the fuzz targets provide, for qemu-img to look at.
	if err := os.WriteFile(filepath.Join(dir, fuzzBaseRaw), bytes.Repeat([]byte("backing-raw-data"), fuzzBaseSize/16), 0o644); err != nil {
		t.Fatal(err)
	}
	qemutest.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=512", filepath.Join(dir, fuzzBaseQcow2), strconv.Itoa(fuzzBaseSize))

	var seeds []fuzzSeed
	n := 0
	// img creates an image with qemu-img, runs qemu-io commands on it (a
	// final "abort" leaves it as a crash would) and returns its bytes.
	img := func(opts, size string, extra []string, io ...string) []byte {
		t.Helper()
		n++
		p := filepath.Join(dir, fmt.Sprintf("img%d.qcow2", n))
		args := append([]string{"create", "-q", "-f", "qcow2", "-o", opts}, extra...)
		qemutest.Run(t, "qemu-img", append(args, p, size)...)
		if len(io) > 0 && io[len(io)-1] == "abort" {
			args := []string{}
			for _, c := range io {
				args = append(args, "-c", c)
			}
			r := qemutest.RunExit(t, "qemu-io", append(args, p)...)
			if r.ExitCode == 0 {
				t.Fatalf("qemu-io abort exited 0: %s", r)
			}
		} else if len(io) > 0 {
			qemutest.QemuIOCommands(t, p, "qcow2", io...)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	add := func(name string, b []byte) { seeds = append(seeds, fuzzSeed{name: name, data: b}) }
	addOpen := func(name string, b []byte) { seeds = append(seeds, fuzzSeed{name: name, data: b, openOnly: true}) }
	cmd := func(dst []byte, f func(p string)) []byte {
		n++
		p := filepath.Join(dir, fmt.Sprintf("img%d.qcow2", n))
		if err := os.WriteFile(p, dst, 0o644); err != nil {
			t.Fatal(err)
		}
		f(p)
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	// Data patterns are printable bytes so that they stay small when quoted
	// (a zero byte takes four); with 512-byte clusters an L2 table maps
	// 32 KiB, so most images stay within one.
	data := []string{"write -P 0x61 0 700", "write -P 0x62 1536 512"}

	// Real images, as QEMU writes them.
	add("v3-c512-empty", img("cluster_size=512", "64K", nil))
	v3 := img("cluster_size=512", "16K", nil, data...)
	add("v3-c512-data", v3)
	add("v3-c512-two-l2", img("cluster_size=512", "64K", nil, "write -P 0x63 0 512", "write -P 0x63 40k 1k"))
	add("v2-c512-data", img("cluster_size=512,compat=0.10", "16K", nil, data...))
	add("v3-c4k-data", img("cluster_size=4k", "64K", nil, "write -P 0x64 4k 4k"))
	add("v3-c512-zero", img("cluster_size=512", "16K", nil, append(data, "write -z 0 512", "write -z -u 2k 1k", "discard 1536 512")...))
	compressed := img("cluster_size=512", "16K", nil, "write -c -P 0x66 0 512", "write -c -P 0x67 1k 512", "write -c -P 0x67 1536 512", "write -P 0x68 2k 512")
	add("v3-c512-compressed", compressed)
	add("v3-c512-zstd", img("cluster_size=512,compression_type=zstd", "16K", nil, "write -c -P 0x69 0 512", "write -c -P 0x69 512 512"))
	add("v3-c512-refbits1", img("cluster_size=512,refcount_bits=1", "16K", nil, data...))
	add("v3-c512-refbits64", img("cluster_size=512,refcount_bits=64", "16K", nil, data...))
	add("v3-c512-prealloc-meta", img("cluster_size=512,preallocation=metadata", "2K", nil))
	add("v3-c512-lazy-dirty", img("cluster_size=512,lazy_refcounts=on", "16K", nil, append(data, "abort")...))
	add("v3-c512-lazy-clean", img("cluster_size=512,lazy_refcounts=on", "16K", nil, data...))
	snap := cmd(v3, func(p string) {
		qemutest.Run(t, "qemu-img", "snapshot", "-c", "s1", p)
		qemutest.QemuIOCommands(t, p, "qcow2", "write -P 0x6a 0 512", "write -P 0x6b 4k 512")
	})
	// Clear the snapshot's date and VM clock, so that the seed is the same
	// on every run.
	sg := fuzzGeometry(t, snap)
	clear(snap[sg.snapOf+16 : sg.snapOf+32])
	add("v3-c512-snapshot", snap)
	add("v3-c512-bitmap", cmd(img("cluster_size=512", "16K", nil), func(p string) {
		qemutest.Run(t, "qemu-img", "bitmap", "--add", p, "b0")
		qemutest.QemuIOCommands(t, p, "qcow2", "write -P 0x6c 0 1k")
	}))
	addOpen("backing-qcow2", img("cluster_size=512", "64K", []string{"-u", "-b", fuzzBaseQcow2, "-F", "qcow2"}, "write -P 0x6d 2k 700"))
	addOpen("backing-raw-v2", img("cluster_size=512,compat=0.10", "128K", []string{"-u", "-b", fuzzBaseRaw, "-F", "raw"}, "write -P 0x6e 1k 1k"))
	addOpen("backing-escape", img("cluster_size=512", "64K", []string{"-u", "-b", "../../etc/passwd", "-F", "raw"}))
	addOpen("backing-absolute", img("cluster_size=512", "64K", []string{"-u", "-b", "/etc/passwd", "-F", "raw"}))
	addOpen("backing-json", img("cluster_size=512", "64K", []string{"-u", "-b", `json:{"file.filename":"x"}`, "-F", "raw"}))
	addOpen("data-file", img("cluster_size=512,data_file=data.raw", "64K", nil))

	// Damaged copies.
	be := binary.BigEndian
	g := fuzzGeometry(t, v3)
	damage := func(name string, src []byte, f func(b []byte)) {
		b := bytes.Clone(src)
		f(b)
		add(name, b)
	}
	or64 := func(off int64, v uint64) func([]byte) {
		return func(b []byte) { be.PutUint64(b[off:], be.Uint64(b[off:])|v) }
	}
	put32 := func(off int64, v uint32) func([]byte) { return func(b []byte) { be.PutUint32(b[off:], v) } }
	put64 := func(off int64, v uint64) func([]byte) { return func(b []byte) { be.PutUint64(b[off:], v) } }
	const copied = uint64(1) << 63
	damage("bad-corrupt-bit", v3, or64(72, 2))
	damage("bad-dirty-not-lazy", v3, or64(72, 1))
	damage("bad-unknown-incompat", v3, or64(72, 1<<20))
	damage("bad-extended-l2", v3, or64(72, 1<<4))
	damage("bad-autoclear", v3, or64(88, 3))
	damage("bad-cluster-bits-30", v3, put32(20, 30))
	damage("bad-refcount-order-7", v3, put32(96, 7))
	damage("bad-size-huge", v3, put64(24, 1<<62))
	damage("bad-header-length", v3, put32(100, 0xfff8))
	damage("bad-backing-offset", v3, func(b []byte) { be.PutUint64(b[8:], 0x1f0); be.PutUint32(b[16:], 0x7ff) })
	damage("bad-l1-size-huge", v3, put32(36, 0x10000000))
	damage("bad-l1-unaligned", v3, put64(40, uint64(g.l1Off+8)))
	damage("bad-l2-beyond-eof", v3, put64(g.l1Off, 0x00fffffffffff000|copied))
	damage("bad-l2-on-reftable", v3, put64(g.l1Off, uint64(g.rtOff)|copied))
	damage("bad-data-on-l1", v3, put64(g.l2Off, uint64(g.l1Off)|copied))
	damage("bad-data-unaligned", v3, put64(g.l2Off, uint64(g.l1Off+16)|copied))
	damage("bad-data-shared", v3, func(b []byte) { copy(b[g.l2Off+8*6:], b[g.l2Off:g.l2Off+8]) })
	damage("bad-compressed-size", v3, put64(g.l2Off, 1<<62|0x3fffffffffffffff))
	damage("bad-no-copied-flag", v3, func(b []byte) {
		for i := int64(0); i < g.cs/8; i++ {
			e := be.Uint64(b[g.l2Off+8*i:])
			be.PutUint64(b[g.l2Off+8*i:], e&^copied)
		}
	})
	damage("bad-refcounts-zero", v3, func(b []byte) { clear(b[g.rbOff+2*4 : g.rbOff+g.cs]) })
	damage("bad-refcount-leak", v3, func(b []byte) {
		end := int64(len(b)) / g.cs
		be.PutUint16(b[g.rbOff+2*end:], 1)
		be.PutUint16(b[g.rbOff+2*(end+3):], 5)
	})
	damage("bad-refblock-missing", v3, put64(g.rtOff, 0))
	damage("bad-refblock-on-l1", v3, put64(g.rtOff, uint64(g.l1Off)))
	// The active L1 table lies past the end of the file and a refcount
	// block is missing: the repair rebuilds the refcounts and must not
	// put the new structures where the L1 table is.
	damage("bad-l1-past-eof-rebuild", v3, func(b []byte) {
		be.PutUint32(b[36:], 64)
		be.PutUint64(b[40:], uint64((int64(len(b))+g.cs-1)/g.cs*g.cs+g.cs))
		be.PutUint64(b[g.rtOff:], 0)
	})
	damage("bad-reftable-huge", v3, put32(56, 0xffffffff))
	damage("bad-nb-snapshots", v3, func(b []byte) { be.PutUint32(b[60:], 100000); be.PutUint64(b[64:], uint64(g.cs)*3) })
	add("bad-truncated", bytes.Clone(v3[:len(v3)/2]))
	// Clean to check, but growing the image shows a cluster mapped past
	// its end (QEMU does the same).
	damage("clean-mapped-past-end", v3, func(b []byte) {
		copy(b[g.l2Off+8*32:], b[g.l2Off+8*3:g.l2Off+8*4])
		clear(b[g.l2Off+8*3 : g.l2Off+8*4])
	})
	// Clean to check, but the compressed data is garbage: reads fail.
	damage("clean-compressed-garbage", compressed, func(b []byte) {
		cg := fuzzGeometry(t, b)
		e := be.Uint64(b[cg.l2Off:])
		off := e & (1<<(62-(bits.TrailingZeros64(uint64(cg.cs))-8)) - 1)
		copy(b[off:], "xxxxxxxxxxxxxxxx")
	})
	damage("bad-snapshot-offset", snap, put64(64, 0x7ffffffffffffe00))
	damage("bad-snapshot-l1-size", snap, put32(sg.snapOf+8, 0xffffffff))
	damage("bad-snapshot-extra-size", snap, put32(sg.snapOf+36, 0xffffffff))
	damage("bad-snapshot-id-size", snap, func(b []byte) { be.PutUint16(b[sg.snapOf+32:], 0xffff) })
	lazy := seeds[fuzzSeedIndex(t, seeds, "v3-c512-lazy-dirty")].data
	lg := fuzzGeometry(t, lazy)
	damage("bad-lazy-dirty-l2-on-header", lazy, put64(lg.l1Off, copied))
	for _, s := range seeds {
		if strings.ContainsAny(s.name, "/ ") {
			t.Fatalf("bad seed name %q", s.name)
		}
	}
	return seeds
}

func fuzzSeedIndex(t *testing.T, seeds []fuzzSeed, name string) int {
	for i, s := range seeds {
		if s.name == name {
			return i
		}
	}
	t.Fatalf("no seed %q", name)
	return -1
}
