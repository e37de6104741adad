package qcow2

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
)

// --- helpers shared with check_parity_test.go -------------------------------

// ckQemuResult is `qemu-img check --output=json` plus its exit status.
type ckQemuResult struct {
	Exit               int
	CheckErrors        int   `json:"check-errors"`
	Corruptions        int   `json:"corruptions"`
	Leaks              int   `json:"leaks"`
	CorruptionsFixed   int   `json:"corruptions-fixed"`
	LeaksFixed         int   `json:"leaks-fixed"`
	ImageEndOffset     int64 `json:"image-end-offset"`
	TotalClusters      int64 `json:"total-clusters"`
	AllocatedClusters  int64 `json:"allocated-clusters"`
	FragmentedClusters int64 `json:"fragmented-clusters"`
	CompressedClusters int64 `json:"compressed-clusters"`
	Stderr             string
}

func ckRun(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// qemuCheck runs qemu-img check --output=json [-r repair] on path.
func ckQemuCheck(t testing.TB, path string, repair string) ckQemuResult {
	t.Helper()
	args := []string{"check", "--output=json"}
	if repair != "" {
		args = append(args, "-r", repair)
	}
	cmd := exec.Command("qemu-img", append(args, path)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var r ckQemuResult
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.Exit = ee.ExitCode()
	default:
		t.Fatalf("qemu-img check: %v", err)
	}
	r.Stderr = stderr.String()
	if stdout.Len() > 0 {
		if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
			t.Fatalf("qemu-img check output: %v\n%s", err, stdout.String())
		}
	}
	return r
}

func ckCopy(t testing.TB, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

func ckOurs(t testing.TB, path string, mode RepairMode) *CheckResult {
	t.Helper()
	r, err := Check(path, CheckOptions{Repair: mode})
	if err != nil {
		t.Fatalf("Check(%s, %v): %v", filepath.Base(path), mode, err)
	}
	return r
}

// ckRequireSame checks path with both implementations (no repair) and
// requires the same exit code and, unless the check failed, the same
// counts; for a check that did not fail also the same statistics.
func ckRequireSame(t testing.TB, path string) (*CheckResult, ckQemuResult) {
	t.Helper()
	q := ckQemuCheck(t, path, "")
	r, err := Check(path, CheckOptions{})
	if err != nil {
		// The image cannot be opened: qemu-img must fail as well.
		if q.Exit != 1 {
			t.Fatalf("Check(%s): %v, but qemu-img check exits %d", filepath.Base(path), err, q.Exit)
		}
		return &CheckResult{CheckErrors: 1, failed: true}, q
	}
	bad := r.ExitCode() != q.Exit
	if q.Exit != 1 && !bad {
		bad = r.Corruptions != q.Corruptions || r.Leaks != q.Leaks || r.CheckErrors != q.CheckErrors ||
			r.ImageEndOffset != q.ImageEndOffset || r.TotalClusters != q.TotalClusters ||
			r.AllocatedClusters != q.AllocatedClusters || r.FragmentedClusters != q.FragmentedClusters ||
			r.CompressedClusters != q.CompressedClusters
	}
	if bad {
		t.Fatalf("%s: check differs from qemu-img:\nours: exit=%d errors=%d corruptions=%d leaks=%d end=%d total=%d alloc=%d frag=%d comp=%d\n%s\nqemu: exit=%d errors=%d corruptions=%d leaks=%d end=%d total=%d alloc=%d frag=%d comp=%d\n%s",
			filepath.Base(path),
			r.ExitCode(), r.CheckErrors, r.Corruptions, r.Leaks, r.ImageEndOffset, r.TotalClusters, r.AllocatedClusters, r.FragmentedClusters, r.CompressedClusters,
			strings.Join(r.Messages, "\n"),
			q.Exit, q.CheckErrors, q.Corruptions, q.Leaks, q.ImageEndOffset, q.TotalClusters, q.AllocatedClusters, q.FragmentedClusters, q.CompressedClusters,
			q.Stderr)
	}
	return r, q
}

// ckImage gives tests access to an image's metadata for damaging it.
type ckImage struct {
	t    testing.TB
	path string
	h    *Header
	cs   int64
	l1   []uint64
	rt   []uint64
}

func ckOpen(t testing.TB, path string) *ckImage {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h, err := readCheckHeader(NewOSFile(f))
	if err != nil {
		t.Fatal(err)
	}
	ti := &ckImage{t: t, path: path, h: h, cs: h.clusterSize()}
	ti.l1 = ti.readU64s(h.L1TableOffset, int(h.L1Size))
	ti.rt = ti.readU64s(h.RefcountTableOffset, int(int64(h.RefcountTableClusters)*ti.cs/8))
	return ti
}

func (ti *ckImage) readAt(off uint64, n int) []byte {
	ti.t.Helper()
	f, err := os.Open(ti.path)
	if err != nil {
		ti.t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if err := readFull(f, b, int64(off)); err != nil {
		ti.t.Fatal(err)
	}
	return b
}

func (ti *ckImage) writeAt(off uint64, b []byte) {
	ti.t.Helper()
	f, err := os.OpenFile(ti.path, os.O_RDWR, 0)
	if err != nil {
		ti.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, int64(off)); err != nil {
		ti.t.Fatal(err)
	}
}

func (ti *ckImage) readU64s(off uint64, n int) []uint64 {
	b := ti.readAt(off, n*8)
	v := make([]uint64, n)
	for i := range v {
		v[i] = binary.BigEndian.Uint64(b[i*8:])
	}
	return v
}

func (ti *ckImage) readU64(off uint64) uint64 { return ti.readU64s(off, 1)[0] }

func (ti *ckImage) writeU64(off, v uint64) {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	ti.writeAt(off, b[:])
}

// l2 returns the offset of the L2 table of L1 entry i and its entries.
func (ti *ckImage) l2(i int) (uint64, []uint64) {
	off := ti.l1[i] & l1OffsetMask
	if off == 0 {
		ti.t.Fatalf("L1 entry %d unallocated", i)
	}
	return off, ti.readU64s(off, int(ti.cs/8))
}

// refcountAt returns the location of cluster k's refcount.
func (ti *ckImage) refblockOf(k int64) (uint64, uint64) {
	bits := ti.h.ClusterBits + 3 - ti.h.RefcountOrder
	rb := ti.rt[k>>bits] & refTableOffMask
	if rb == 0 {
		ti.t.Fatalf("no refcount block for cluster %d", k)
	}
	return rb, uint64(k) & (uint64(1)<<bits - 1)
}

func (ti *ckImage) refcount(k int64) uint64 {
	rb, idx := ti.refblockOf(k)
	return getRefcount(ti.readAt(rb, int(ti.cs)), idx, ti.h.RefcountOrder)
}

func (ti *ckImage) setRefcount(k int64, v uint64) {
	rb, idx := ti.refblockOf(k)
	b := ti.readAt(rb, int(ti.cs))
	setRefcount(b, idx, ti.h.RefcountOrder, v)
	ti.writeAt(rb, b)
}

func (ti *ckImage) setIncompat(bits uint64) {
	ti.writeU64(hdrOffIncompat, bits)
	ti.h.IncompatibleFeatures = bits
}

// ckMake creates a qcow2 image with qemu-img and runs qemu-io commands
// on it.
func ckMake(t testing.TB, path, opts, size string, ioCmds ...string) {
	t.Helper()
	args := []string{"create", "-q", "-f", "qcow2"}
	if opts != "" {
		args = append(args, "-o", opts)
	}
	ckRun(t, "qemu-img", append(args, path, size)...)
	ckQemuIO(t, path, ioCmds...)
}

func ckQemuIO(t testing.TB, path string, cmds ...string) {
	t.Helper()
	if len(cmds) == 0 {
		return
	}
	var args []string
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	// -t unsafe: no flushes (the image is the same, the test is faster).
	ckRun(t, "qemu-io", append(args, "-t", "unsafe", "-f", "qcow2", path)...)
}

// --- tests ------------------------------------------------------------------

// TestCheckCleanMatrix: images QEMU made (data, internal snapshots,
// compressed clusters) check clean at every cluster size and refcount
// width, with the same statistics as qemu-img check.
func TestCheckCleanMatrix(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	for cb := 9; cb <= 21; cb++ {
		cs := 1 << cb
		for order := 0; order <= 6; order++ {
			bits := 1 << order
			name := fmt.Sprintf("c%d_r%d", cs, bits)
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				p := filepath.Join(dir, name+".qcow2")
				ckMake(t, p, fmt.Sprintf("cluster_size=%d,refcount_bits=%d", cs, bits), "24M",
					"write -P 0x11 0 300k", "write -P 0x22 5M 70k", "write -z 9M 1M", "write -P 0x33 20M 2M")
				ckRequireSame(t, p)
				if bits > 1 {
					// Internal snapshots share clusters (refcount 2, no COPIED).
					ckRun(t, "qemu-img", "snapshot", "-c", "s1", p)
					ckQemuIO(t, p, "write -P 0x44 100k 8k", "discard 20M 1M")
					ckRun(t, "qemu-img", "snapshot", "-c", "s2", p)
					ckQemuIO(t, p, "write -P 0x55 6M 1k")
					ckRequireSame(t, p)
				}
				c := filepath.Join(dir, name+".c.qcow2")
				ckRun(t, "qemu-img", "convert", "-t", "unsafe", "-c", "-O", "qcow2", "-o",
					fmt.Sprintf("cluster_size=%d,refcount_bits=%d", cs, bits), p, c)
				ckRequireSame(t, c)
				if r := ckOurs(t, c, RepairNone); r.CompressedClusters == 0 {
					t.Fatalf("no compressed clusters in %s", c)
				}
			})
		}
	}
}

// TestCheckCleanVariants: version 2 images, lazy refcounts, extended L2
// entries, preallocated metadata, persistent bitmaps, a backing file, the
// failed-snapshot leak of a 1-bit refcount image.
func TestCheckCleanVariants(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	ckMake(t, base, "", "32M", "write -P 7 0 2M")
	cases := []struct {
		name, opts string
		io         []string
		after      func(p string)
	}{
		{"v2", "compat=0.10", []string{"write -P 1 0 1M", "write -z 2M 64k"}, func(p string) {
			ckRun(t, "qemu-img", "snapshot", "-c", "s", p)
			ckQemuIO(t, p, "write -P 2 0 64k")
		}},
		{"lazy", "lazy_refcounts=on", []string{"write -P 1 0 1M", "write -P 3 20M 64k"}, nil},
		{"extl2", "extended_l2=on,cluster_size=64k", []string{"write -P 1 0 1M", "write -P 2 3M 4k", "write -z 5M 8k"}, func(p string) {
			ckRun(t, "qemu-img", "snapshot", "-c", "s", p)
			ckQemuIO(t, p, "write -P 9 3M 2k")
		}},
		{"extl2-2m", "extended_l2=on,cluster_size=2M", []string{"write -P 1 0 100k", "write -P 2 7M 4k"}, nil},
		{"prealloc", "preallocation=metadata", []string{"write -P 1 0 1M"}, nil},
		{"falloc", "preallocation=falloc,cluster_size=4k", nil, nil},
		{"bitmaps", "", []string{"write -P 1 0 3M"}, func(p string) {
			ckRun(t, "qemu-img", "bitmap", "--add", p, "b0")
			ckRun(t, "qemu-img", "bitmap", "--add", "-g", "512", p, "b1")
			ckQemuIO(t, p, "write -P 1 8M 3M")
		}},
		{"backing", "backing_file=" + base + ",backing_fmt=qcow2", []string{"write -P 2 1M 1M"}, nil},
		{"zstd", "compression_type=zstd", []string{"write -P 1 0 1M"}, nil},
		{"r1-failed-snapshot", "refcount_bits=1", []string{"write -P 1 0 1M"}, func(p string) {
			_ = exec.Command("qemu-img", "snapshot", "-c", "s", p).Run() // fails, leaks a cluster
		}},
		{"empty", "", nil, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, tc.name+".qcow2")
			ckMake(t, p, tc.opts, "32M", tc.io...)
			if tc.after != nil {
				tc.after(p)
			}
			ckRequireSame(t, p)
		})
	}
	// Bitmaps with data: the bitmap tables and data clusters are counted
	// (qemu-img writes them when the image is closed).
	t.Run("bitmaps-data", func(t *testing.T) {
		p := filepath.Join(dir, "bmdata.qcow2")
		ckMake(t, p, "cluster_size=4k", "16M")
		ckRun(t, "qemu-img", "bitmap", "--add", p, "b0")
		src := filepath.Join(dir, "bmsrc.qcow2")
		ckMake(t, src, "cluster_size=4k", "16M", "write -P 3 0 16M")
		ckRun(t, "qemu-img", "bitmap", "--add", src, "all")
		ckRun(t, "qemu-img", "bitmap", "--enable", src, "all")
		ckQemuIO(t, src, "write -P 4 0 16M")
		ckRun(t, "qemu-img", "bitmap", "--merge", "all", "-b", src, "-F", "qcow2", p, "b0")
		r, _ := ckRequireSame(t, p)
		if !r.Clean() {
			t.Fatalf("not clean: %v", r.Messages)
		}
	})
}

// TestCheckResultExitCode covers the exit code mapping.
func TestCheckResultExitCode(t *testing.T) {
	for _, tc := range []struct {
		r    CheckResult
		want int
	}{
		{CheckResult{}, 0},
		{CheckResult{Leaks: 2}, 3},
		{CheckResult{Leaks: 2, Corruptions: 1}, 2},
		{CheckResult{Corruptions: 1, CheckErrors: 1}, 1},
		{CheckResult{LeaksFixed: 3, CorruptionsFixed: 1}, 0},
	} {
		if got := tc.r.ExitCode(); got != tc.want {
			t.Errorf("%+v: ExitCode %d, want %d", tc.r, got, tc.want)
		}
	}
	r := CheckResult{AllocatedClusters: 17, TotalClusters: 1024, ImageEndOffset: 1441792}
	want := "No errors were found on the image.\n17/1024 = 1.66% allocated, 0.00% fragmented, 0.00% compressed clusters\nImage end offset: 1441792\n"
	if got := r.Summary(); got != want {
		t.Errorf("Summary:\n%q\nwant\n%q", got, want)
	}
}

// TestCheckRebuildRefcounts: a dirty image whose refcount blocks were
// zeroed (as after a crash with lazy refcounts) gets its refcounts rebuilt
// by rebuildRefcounts: qemu-img check is clean afterwards, the dirty bit is
// clear and the data is unchanged.
func TestCheckRebuildRefcounts(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	for _, tc := range []struct{ name, opts string }{
		{"64k-16", "lazy_refcounts=on"},
		{"512-1", "cluster_size=512,refcount_bits=1"},
		{"4k-64", "cluster_size=4k,refcount_bits=64"},
		{"2m-8", "cluster_size=2M,refcount_bits=8"},
		{"snapshots", "cluster_size=16k,refcount_bits=4"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, tc.name+".qcow2")
			ckMake(t, p, tc.opts, "40M", "write -P 1 0 3M", "write -P 2 17M 100k", "write -z 30M 1M")
			if tc.name == "snapshots" {
				ckRun(t, "qemu-img", "snapshot", "-c", "s1", p)
				ckQemuIO(t, p, "write -P 3 64k 200k")
				ckRun(t, "qemu-img", "snapshot", "-c", "s2", p)
				ckQemuIO(t, p, "write -P 4 17M 16k")
			}
			ref := filepath.Join(dir, tc.name+".ref.qcow2")
			ckCopy(t, p, ref)

			ti := ckOpen(t, p)
			for _, e := range ti.rt {
				if off := e & refTableOffMask; off != 0 {
					ti.writeAt(off, make([]byte, ti.cs))
				}
			}
			ti.setIncompat(ti.h.IncompatibleFeatures | incompatDirty)
			if q := ckQemuCheck(t, p, ""); q.Exit == 0 {
				t.Fatal("damage not detected by qemu-img")
			}

			f, err := os.OpenFile(p, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			file := NewOSFile(f)
			h, err := readCheckHeader(file)
			if err != nil {
				t.Fatal(err)
			}
			if err := rebuildRefcounts(longRun{}, file, h); err != nil {
				t.Fatal(err)
			}
			if h.IncompatibleFeatures&incompatDirty != 0 {
				t.Fatal("dirty bit still set in h")
			}
			file.Close()
			if q := ckQemuCheck(t, p, ""); q.Exit != 0 {
				t.Fatalf("qemu-img check after rebuild: exit %d\n%s", q.Exit, q.Stderr)
			}
			if ti := ckOpen(t, p); ti.h.IncompatibleFeatures&incompatDirty != 0 {
				t.Fatal("dirty bit still set on disk")
			}
			ckRun(t, "qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", ref, p)
			if tc.name == "snapshots" {
				for _, s := range []string{"s1", "s2"} {
					a, b := filepath.Join(dir, "a.raw"), filepath.Join(dir, "b.raw")
					ckRun(t, "qemu-img", "convert", "-l", "snapshot.name="+s, "-O", "raw", ref, a)
					ckRun(t, "qemu-img", "convert", "-l", "snapshot.name="+s, "-O", "raw", p, b)
					ra, errA := os.ReadFile(a)
					rb, errB := os.ReadFile(b)
					if errA != nil || errB != nil || !bytes.Equal(ra, rb) {
						t.Fatalf("snapshot %s differs after the rebuild (%v %v)", s, errA, errB)
					}
				}
			}
			// A second call on the now clean image only checks.
			size := ckFileSize(t, p)
			f, _ = os.OpenFile(p, os.O_RDWR, 0)
			file = NewOSFile(f)
			h, _ = readCheckHeader(file)
			if err := rebuildRefcounts(longRun{}, file, h); err != nil {
				t.Fatal(err)
			}
			file.Close()
			if ckFileSize(t, p) != size {
				t.Fatal("rebuild of a consistent image grew the file")
			}
		})
	}
}

// TestCheckRebuildRefcountsAfterQemuCrash: qemu-io aborted after a flush
// with lazy refcounts leaves a dirty image whose refcounts lag behind;
// rebuildRefcounts makes it check clean with the flushed data intact.
func TestCheckRebuildRefcountsAfterQemuCrash(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	for _, opts := range []string{"lazy_refcounts=on", "lazy_refcounts=on,cluster_size=4k,refcount_bits=2"} {
		p := filepath.Join(dir, "crash.qcow2")
		ref := filepath.Join(dir, "ref.qcow2")
		os.Remove(p)
		os.Remove(ref)
		cmds := []string{"write -P 1 0 512k", "write -P 2 4M 64k", "write -P 3 9M 4k"}
		ckMake(t, ref, opts, "16M", cmds...)
		ckRun(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", opts, p, "16M")
		var args []string
		for _, c := range append(cmds, "flush", "abort") {
			args = append(args, "-c", c)
		}
		_ = exec.Command("qemu-io", append(args, "-f", "qcow2", p)...).Run() // aborts
		ti := ckOpen(t, p)
		if ti.h.IncompatibleFeatures&incompatDirty == 0 {
			t.Fatalf("%s: qemu-io abort left a clean image", opts)
		}
		if q := ckQemuCheck(t, p, ""); q.Exit == 0 {
			t.Fatalf("%s: crashed image checks clean; the test needs lagging refcounts", opts)
		}
		ckRequireSame(t, p)
		for _, mode := range []RepairMode{RepairLeaks, RepairAll} {
			ckRepairParity(t, ref, p, mode, true)
		}
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		file := NewOSFile(f)
		h, err := readCheckHeader(file)
		if err == nil {
			err = rebuildRefcounts(longRun{}, file, h)
		}
		file.Close()
		if err != nil {
			t.Fatalf("%s: %v", opts, err)
		}
		if q := ckQemuCheck(t, p, ""); q.Exit != 0 {
			t.Fatalf("%s: qemu-img check after rebuild: exit %d\n%s", opts, q.Exit, q.Stderr)
		}
		if ckOpen(t, p).h.IncompatibleFeatures&incompatDirty != 0 {
			t.Fatalf("%s: dirty bit still set", opts)
		}
		ckRun(t, "qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", ref, p)
	}
}

// TestCheckRebuildRefcountsRefusesDamage: structural damage a refcount
// rebuild cannot fix is reported as ErrCorrupt and nothing is written.
func TestCheckRebuildRefcountsRefusesDamage(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	p := filepath.Join(dir, "d.qcow2")
	ckMake(t, p, "lazy_refcounts=on", "16M", "write -P 1 0 1M")
	ti := ckOpen(t, p)
	ti.writeU64(ti.h.L1TableOffset, ti.l1[0]+512) // misaligned L2 table
	ti.setIncompat(ti.h.IncompatibleFeatures | incompatDirty)
	before, _ := os.ReadFile(p)
	f, _ := os.OpenFile(p, os.O_RDWR, 0)
	file := NewOSFile(f)
	h, _ := readCheckHeader(file)
	err := rebuildRefcounts(longRun{}, file, h)
	file.Close()
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("got %v, want ErrCorrupt", err)
	}
	after, _ := os.ReadFile(p)
	if !bytes.Equal(before, after) {
		t.Fatal("image changed")
	}
}

func ckFileSize(t testing.TB, p string) int64 {
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// TestCheckSnapshotTableRoundTrip parses a table QEMU wrote and encodes it
// back byte for byte.
func TestCheckSnapshotTableRoundTrip(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	p := filepath.Join(dir, "s.qcow2")
	ckMake(t, p, "cluster_size=4k", "8M", "write -P 1 0 64k")
	for _, n := range []string{"first", "a-much-longer-snapshot-name", "x"} {
		ckRun(t, "qemu-img", "snapshot", "-c", n, p)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	file := NewOSFile(f)
	h, err := readCheckHeader(file)
	if err != nil {
		t.Fatal(err)
	}
	tbl, err := readSnapshotTable(file, h)
	if err != nil {
		t.Fatal(err)
	}
	if len(tbl.Entries) != 3 || tbl.Entries[1].Name != "a-much-longer-snapshot-name" || tbl.Entries[2].ID != "3" {
		t.Fatalf("entries: %+v", tbl.Entries)
	}
	for _, e := range tbl.Entries {
		if e.DiskSize != 8<<20 || e.L1Size == 0 || e.L1Offset == 0 {
			t.Fatalf("entry %+v", e)
		}
	}
	enc, err := encodeSnapshotTable(tbl.Entries)
	if err != nil {
		t.Fatal(err)
	}
	raw := make([]byte, tbl.Size)
	if err := readFull(file, raw, int64(tbl.Offset)); err != nil {
		t.Fatal(err)
	}
	if int64(len(enc)) != tbl.Size || !bytes.Equal(enc, raw) {
		t.Fatalf("re-encoded table differs (%d vs %d bytes)", len(enc), tbl.Size)
	}
}

// ckMemFile is a File in memory, for inputs qemu-img cannot make.
type ckMemFile struct{ b []byte }

func (m *ckMemFile) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(m.b)) {
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *ckMemFile) WriteAt(p []byte, off int64) (int, error) {
	if end := off + int64(len(p)); end > int64(len(m.b)) {
		m.b = append(m.b, make([]byte, end-int64(len(m.b)))...)
	}
	return copy(m.b[off:], p), nil
}
func (m *ckMemFile) Sync() error          { return nil }
func (m *ckMemFile) Size() (int64, error) { return int64(len(m.b)), nil }
func (m *ckMemFile) Close() error         { return nil }
func (m *ckMemFile) PunchHole(off, n int64) error {
	if off < int64(len(m.b)) {
		clear(m.b[off:min(off+n, int64(len(m.b)))])
	}
	return nil
}
func (m *ckMemFile) Truncate(n int64) error {
	if n < int64(len(m.b)) {
		m.b = m.b[:n]
	} else {
		m.b = append(m.b, make([]byte, n-int64(len(m.b)))...)
	}
	return nil
}

// TestCheckHostileHeaders: huge or wild values in the header and tables
// give errors or findings, never a panic or a huge allocation.
func TestCheckHostileHeaders(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	p := filepath.Join(dir, "h.qcow2")
	ckMake(t, p, "cluster_size=4k", "8M", "write -P 1 0 64k")
	ckRun(t, "qemu-img", "snapshot", "-c", "s", p)
	orig, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	ti := ckOpen(t, p)
	put64 := func(off int, v uint64) func([]byte) {
		return func(b []byte) { binary.BigEndian.PutUint64(b[off:], v) }
	}
	put32 := func(off int, v uint32) func([]byte) {
		return func(b []byte) { binary.BigEndian.PutUint32(b[off:], v) }
	}
	snap := int(ti.h.SnapshotsOffset)
	for i, damage := range []func([]byte){
		put32(36, 0xffffffff),           // l1_size
		put64(40, 0xfffffffffffff000),   // l1 offset
		put64(40, 0x7ffffffffffff000),   // l1 offset far beyond EOF
		put32(56, 0xffffffff),           // refcount table clusters
		put64(48, 0x7ffffffffffff000),   // refcount table offset
		put32(60, 0xffffffff),           // nb_snapshots
		put64(64, 0x7ffffffffffff000),   // snapshots offset
		put64(64, 0x1000),               // snapshot table on the L1 table
		put32(snap+36, 0xffffffff),      // snapshot extra data size
		put32(snap+8, 0xffffffff),       // snapshot l1 size
		put64(snap, 0x7ffffffffffff000), // snapshot l1 offset
		put64(int(ti.h.L1TableOffset), 0x00fffffffffff000|oflagCopied),
		put64(int(ti.h.RefcountTableOffset), 0x00fffffffffff000),
		put64(int(ti.h.RefcountTableOffset), 0xfffffffffffff000),
		put64(int(ti.l1[0]&l1OffsetMask), oflagCompressed|0x3fffffffffffffff),
		put32(20, 30), // cluster bits
		put32(96, 7),  // refcount order
	} {
		for _, mode := range []RepairMode{RepairNone, RepairAll} {
			m := &ckMemFile{b: append([]byte(nil), orig...)}
			damage(m.b)
			res, err := CheckFile(m, CheckOptions{Repair: mode})
			if err == nil && res.ExitCode() == 0 && mode == RepairNone {
				t.Errorf("damage %d: reported clean", i)
			}
			if len(m.b) > len(orig)+64<<20 {
				t.Errorf("damage %d: file grew to %d bytes", i, len(m.b))
			}
		}
	}
}
