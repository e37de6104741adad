package qcow2_test

// Changed-block queries against QEMU's view of the content: every byte
// that differs between two exports (qemu-img convert, -l snapshot.name for
// snapshots) must lie inside the reported ranges, and the ranges must stay
// inside the clusters the operations between the two points touched.

import (
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/qemutest"
	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// chExport returns the guest content of a layer of path as qemu-img sees
// it: snapshot "" is the active layer.
func chExport(t *testing.T, path, snapshot string) []byte {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "export.raw")
	if snapshot == "" {
		qemutest.ConvertToRaw(t, path, "", dst)
	} else {
		qemutest.ConvertSnapshotToRaw(t, path, snapshot, dst)
	}
	b, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// chWellFormed fails unless rs is sorted, merged, non-empty and inside
// [0, size).
func chWellFormed(t *testing.T, what string, rs []qcow2.Range, size int64) {
	t.Helper()
	for i, r := range rs {
		if r.Length <= 0 || r.Start < 0 || r.End() > size {
			t.Fatalf("%s: range %d %+v is empty or outside [0, %d)", what, i, r, size)
		}
		if i > 0 && rs[i-1].End() >= r.Start {
			t.Fatalf("%s: ranges %+v and %+v are unsorted or not merged", what, rs[i-1], r)
		}
	}
}

// chCovers fails unless every byte where a and b differ (the shorter one
// zero-extended) lies inside rs.
func chCovers(t *testing.T, what string, a, b []byte, rs []qcow2.Range) {
	t.Helper()
	n := max(len(a), len(b))
	at := func(p []byte, i int) byte {
		if i < len(p) {
			return p[i]
		}
		return 0
	}
	k := 0
	for i := 0; i < n; i++ {
		if at(a, i) == at(b, i) {
			continue
		}
		for k < len(rs) && rs[k].End() <= int64(i) {
			k++
		}
		if k == len(rs) || rs[k].Start > int64(i) {
			t.Fatalf("%s: byte %d differs (%#02x vs %#02x) but is outside the changed ranges %v", what, i, at(a, i), at(b, i), rs)
		}
	}
}

// chWithin fails unless every range lies inside the union of allowed
// (sorted or not).
func chWithin(t *testing.T, what string, rs, allowed []qcow2.Range) {
	t.Helper()
	for _, r := range rs {
		for pos := r.Start; pos < r.End(); {
			i := slices.IndexFunc(allowed, func(a qcow2.Range) bool { return a.Start <= pos && pos < a.End() })
			if i < 0 {
				t.Fatalf("%s: range %+v reaches byte %d, which no operation touched (touched: %v)", what, r, pos, allowed)
			}
			pos = allowed[i].End()
		}
	}
}

// chClusters rounds [off, off+n) out to whole clusters.
func chClusters(off, n, cs int64) qcow2.Range {
	s := off / cs * cs
	return qcow2.Range{Start: s, Length: (off+n+cs-1)/cs*cs - s}
}

// chStep is qemu-io commands and the guest bytes they touch.
type chStep struct {
	cmd     string
	off, n  int64
	hasData bool // leaves non-zero data (for AllocatedRanges checks)
}

func chWrite(off, n int64, p byte) chStep {
	return chStep{fmt.Sprintf("write -P 0x%02x %d %d", p, off, n), off, n, true}
}

func TestChangedRangesQemuSnapshots(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	for _, tc := range []struct {
		name    string
		cs      int64
		backing bool
	}{
		{"c64K", 64 << 10, false},
		{"c4K", 4 << 10, false}, // 4 L2 tables: shared ones are skipped
		{"c4K-backing", 4 << 10, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "img.qcow2")
			const size = 8 << 20
			cs := tc.cs
			o := qemutest.ImageOptions{Size: size, ClusterSize: cs}
			if tc.backing {
				base := filepath.Join(dir, "base.qcow2")
				qemutest.CreateImage(t, base, qemutest.ImageOptions{Size: size, ClusterSize: cs})
				// Backing data everywhere the top later zeroes or discards.
				qemutest.QemuIOCommands(t, base, "qcow2", "write -P 0x11 0 8M")
				o.BackingFile, o.BackingFormat = "base.qcow2", "qcow2"
			}
			qemutest.CreateImage(t, path, o)

			phases := [][]chStep{
				{ // before s1
					chWrite(0, 300<<10, 0xa1),
					chWrite(3<<20+100, 5000, 0xa2),
					chWrite(6<<20, 256<<10, 0xa3),
					{fmt.Sprintf("write -c -P 0xa4 %d %d", 7<<20, 2*cs), 7 << 20, 2 * cs, true},
				},
				{ // between s1 and s2: one aligned 64K write
					chWrite(1<<20, 64<<10, 0xb1),
				},
				{ // after s2
					chWrite(100, 10, 0xc1), // partial cluster, shared with both snapshots
					chWrite(6<<20+64<<10, 4096, 0xc2),
					{fmt.Sprintf("write -z %d %d", 3<<20, 64<<10), 3 << 20, 64 << 10, false},
					{fmt.Sprintf("write -z -u %d %d", 6<<20+128<<10, 64<<10), 6<<20 + 128<<10, 64 << 10, false},
					{fmt.Sprintf("discard %d %d", 200<<10, 64<<10), 200 << 10, 64 << 10, false},
					{fmt.Sprintf("write -c -P 0xc3 %d %d", 7<<20+4*cs, cs), 7<<20 + 4*cs, cs, true}, // compressed writes need unallocated clusters
					chWrite(5<<20, 8192, 0xc4), // unallocated before
				},
			}
			snaps := []string{"s1", "s2", ""} // the layer after each phase
			for i, ph := range phases {
				cmds := make([]string, len(ph))
				for j, s := range ph {
					cmds[j] = s.cmd
				}
				qemutest.QemuIOCommands(t, path, "qcow2", cmds...)
				if snaps[i] != "" {
					qemutest.CreateSnapshot(t, path, snaps[i])
				}
			}
			exports := map[string][]byte{}
			for _, s := range snaps {
				exports[s] = chExport(t, path, s)
			}

			img, err := qcow2.Open(path, qcow2.Options{ReadOnly: true, Backing: qcow2.BackingPolicy{AllowAnyPath: true}})
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()

			touched := func(from, to int) []qcow2.Range {
				var out []qcow2.Range
				for p := from + 1; p <= to; p++ {
					for _, s := range phases[p] {
						out = append(out, chClusters(s.off, s.n, cs))
					}
				}
				return out
			}
			for i := range snaps {
				for j := range snaps {
					what := fmt.Sprintf("ChangedRanges(%q, %q)", snaps[i], snaps[j])
					rs, err := img.ChangedRanges(snaps[i], snaps[j])
					if err != nil {
						t.Fatalf("%s: %v", what, err)
					}
					chWellFormed(t, what, rs, size)
					chCovers(t, what, exports[snaps[i]], exports[snaps[j]], rs)
					chWithin(t, what, rs, touched(min(i, j), max(i, j)))
					if i == j && len(rs) != 0 {
						t.Fatalf("%s: a layer differs from itself: %v", what, rs)
					}
				}
			}
			rs, err := img.ChangedRanges("s1", "s2")
			if err != nil {
				t.Fatal(err)
			}
			if want := []qcow2.Range{{Start: 1 << 20, Length: 64 << 10}}; !slices.Equal(rs, want) {
				t.Fatalf("one 64K write between s1 and s2: changed %v, want %v", rs, want)
			}
			// Snapshot ids work as well as names.
			if byID, err := img.ChangedRanges("1", "2"); err != nil || !slices.Equal(byID, rs) {
				t.Fatalf("ChangedRanges by id: %v, %v; by name %v", byID, err, rs)
			}

			// AllocatedRanges: every byte the layer itself stores non-zero
			// is inside; the ranges are exactly what the ops allocated.
			for i, s := range snaps {
				what := fmt.Sprintf("AllocatedRanges(%q)", s)
				al, err := img.AllocatedRanges(s)
				if err != nil {
					t.Fatalf("%s: %v", what, err)
				}
				chWellFormed(t, what, al, size)
				chWithin(t, what, al, touched(-1, i))
				var own []qcow2.Range
				for p := 0; p <= i; p++ {
					for _, st := range phases[p] {
						if st.hasData {
							own = append(own, qcow2.Range{Start: st.off, Length: st.n})
						}
					}
				}
				if !tc.backing {
					// Without backing every non-zero byte is this layer's.
					chCovers(t, what, exports[s], make([]byte, size), al)
				}
				if i == 0 {
					want := []qcow2.Range{
						chClusters(0, 300<<10, cs), chClusters(3<<20+100, 5000, cs),
						chClusters(6<<20, 256<<10, cs), chClusters(7<<20, 2*cs, cs),
					}
					if !slices.Equal(al, want) {
						t.Fatalf("%s = %v, want %v", what, al, want)
					}
				}
			}
			if _, err := img.ChangedRanges("nope", ""); !errors.Is(err, qcow2.ErrSnapshotNotFound) {
				t.Fatalf("unknown snapshot: %v", err)
			}
			if _, err := img.AllocatedRanges("nope"); !errors.Is(err, qcow2.ErrSnapshotNotFound) {
				t.Fatalf("unknown snapshot: %v", err)
			}
		})
	}
}

// TestChangedRangesEngineSnapshots takes snapshots with the engine, random
// writes, zeroes and discards in between, and a resize, and checks the
// ranges against qemu-img's exports of the result.
func TestChangedRangesEngineSnapshots(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	path := filepath.Join(dir, "img.qcow2")
	const cs = 4096
	const size = 4<<20 + 1536 // not cluster aligned
	if err := qcow2.Create(path, qcow2.CreateOptions{Size: size, ClusterSize: cs}); err != nil {
		t.Fatal(err)
	}
	img, err := qcow2.Open(path, qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(3))
	type point struct {
		name    string
		touched []qcow2.Range // since the previous point
	}
	var points []point
	cur := int64(size)
	for step := range 4 {
		var touched []qcow2.Range
		for range 12 {
			n := 1 + rng.Int63n(3*cs)
			off := rng.Int63n(cur - n + 1)
			switch rng.Intn(4) {
			case 0:
				if err := img.WriteZeroes(off, n, rng.Intn(2) == 0); err != nil {
					t.Fatal(err)
				}
			case 1:
				if err := img.Discard(off, n); err != nil {
					t.Fatal(err)
				}
			default:
				p := make([]byte, n)
				rng.Read(p)
				if _, err := img.WriteAt(p, off); err != nil {
					t.Fatal(err)
				}
			}
			touched = append(touched, chClusters(off, n, cs))
		}
		if step < 2 {
			// A compressed cluster, recompressed with other bytes at the
			// next step: two streams, both compressed, must differ.
			const off = 10 * cs
			if err := img.Discard(off, cs); err != nil {
				t.Fatal(err)
			}
			p := qemutest.Pattern(byte(0x70+step), cs)
			if err := img.WriteCompressed(p, off); err != nil {
				t.Fatal(err)
			}
			touched = append(touched, qcow2.Range{Start: off, Length: cs})
		}
		if step == 2 {
			// Grow to an unaligned size past an L2 table boundary (512
			// entries of 4K: 2 MiB), then write in the new area.
			if err := img.Resize(cur + 3<<20 + 512); err != nil {
				t.Fatal(err)
			}
			touched = append(touched, qcow2.Range{Start: cur / cs * cs, Length: 4 << 20})
			cur += 3<<20 + 512
			p := make([]byte, 5000)
			rng.Read(p)
			if _, err := img.WriteAt(p, cur-6000); err != nil {
				t.Fatal(err)
			}
		}
		name := fmt.Sprintf("snap%d", step)
		if step == 3 {
			name = "" // the active layer
		} else if _, err := img.CreateSnapshot(name); err != nil {
			t.Fatal(err)
		}
		points = append(points, point{name, touched})
	}
	// Query the writable image, then close it and compare with qemu-img.
	type result struct {
		from, to int
		rs       []qcow2.Range
	}
	var results []result
	for i := range points {
		for j := range points {
			rs, err := img.ChangedRanges(points[i].name, points[j].name)
			if err != nil {
				t.Fatalf("ChangedRanges(%q, %q): %v", points[i].name, points[j].name, err)
			}
			results = append(results, result{i, j, rs})
		}
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	exports := make([][]byte, len(points))
	for i, p := range points {
		exports[i] = chExport(t, path, p.name)
	}
	for _, r := range results {
		what := fmt.Sprintf("ChangedRanges(%q, %q)", points[r.from].name, points[r.to].name)
		chWellFormed(t, what, r.rs, int64(max(len(exports[r.from]), len(exports[r.to]))))
		chCovers(t, what, exports[r.from], exports[r.to], r.rs)
		var allowed []qcow2.Range
		for p := min(r.from, r.to) + 1; p <= max(r.from, r.to); p++ {
			allowed = append(allowed, points[p].touched...)
		}
		chWithin(t, what, r.rs, allowed)
	}
}

// TestChangedBetweenLayers builds base <- mid <- top with qemu-io and
// checks the ranges against the exports of each layer.
func TestChangedBetweenLayers(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	mid := filepath.Join(dir, "mid.qcow2")
	top := filepath.Join(dir, "top.qcow2")
	const size = 4 << 20
	qemutest.CreateImage(t, base, qemutest.ImageOptions{Size: size})
	qemutest.QemuIOCommands(t, base, "qcow2", "write -P 0x11 0 4M")
	qemutest.CreateImage(t, mid, qemutest.ImageOptions{BackingFile: "base.qcow2", BackingFormat: "qcow2"})
	qemutest.QemuIOCommands(t, mid, "qcow2", "write -P 0x22 1M 64K", "write -z 2M 128K")
	qemutest.CreateImage(t, top, qemutest.ImageOptions{BackingFile: "mid.qcow2", BackingFormat: "qcow2"})
	qemutest.QemuIOCommands(t, top, "qcow2", "write -P 0x33 1M 4K", "write -P 0x44 3M 100", "discard 2M 64K")

	img, err := qcow2.Open(top, qcow2.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	midImg, ok := img.Backing().(*qcow2.Image)
	if !ok {
		t.Fatalf("backing of top is %T", img.Backing())
	}
	baseDisk := midImg.Backing()

	topRaw := chExport(t, top, "")
	for _, tc := range []struct {
		name string
		base qcow2.Disk
		path string
		want []qcow2.Range
	}{
		{"mid", midImg, mid, []qcow2.Range{{Start: 1 << 20, Length: 64 << 10}, {Start: 2 << 20, Length: 64 << 10}, {Start: 3 << 20, Length: 64 << 10}}},
		{"base", baseDisk, base, []qcow2.Range{{Start: 1 << 20, Length: 64 << 10}, {Start: 2 << 20, Length: 128 << 10}, {Start: 3 << 20, Length: 64 << 10}}},
	} {
		rs, err := qcow2.ChangedBetweenLayers(img, tc.base)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		what := "ChangedBetweenLayers(top, " + tc.name + ")"
		chWellFormed(t, what, rs, size)
		chCovers(t, what, chExport(t, tc.path, ""), topRaw, rs)
		if !slices.Equal(rs, tc.want) {
			t.Fatalf("%s = %v, want %v", what, rs, tc.want)
		}
	}
	if rs, err := qcow2.ChangedBetweenLayers(img, img); err != nil || len(rs) != 0 {
		t.Fatalf("top against itself: %v, %v", rs, err)
	}
	other, err := qcow2.Open(base, qcow2.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := qcow2.ChangedBetweenLayers(img, other); !errors.Is(err, qcow2.ErrNotInChain) {
		t.Fatalf("a base outside the chain: %v, want ErrNotInChain", err)
	}
	if _, err := qcow2.ChangedBetweenLayers(midImg, img); !errors.Is(err, qcow2.ErrNotInChain) {
		t.Fatalf("a base above the image: %v, want ErrNotInChain", err)
	}
}

// TestChangedBetweenLayersShorterLayer: a layer above base that is
// shorter than base hides base's tail; that tail is reported.
func TestChangedBetweenLayersShorterLayer(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	top := filepath.Join(dir, "top.qcow2")
	qemutest.CreateImage(t, base, qemutest.ImageOptions{Size: 4 << 20})
	qemutest.QemuIOCommands(t, base, "qcow2", "write -P 0x11 0 4M")
	qemutest.CreateImage(t, top, qemutest.ImageOptions{Size: 3 << 20, BackingFile: "base.qcow2", BackingFormat: "qcow2"})
	img, err := qcow2.Open(top, qcow2.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	rs, err := qcow2.ChangedBetweenLayers(img, img.Backing())
	if err != nil {
		t.Fatal(err)
	}
	chCovers(t, "shorter top", chExport(t, base, ""), chExport(t, top, ""), rs)
	if want := []qcow2.Range{{Start: 3 << 20, Length: 1 << 20}}; !slices.Equal(rs, want) {
		t.Fatalf("got %v, want %v", rs, want)
	}
}
