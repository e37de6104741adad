package qcow2

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
)

// Parity with qemu-img check on damaged images: the same exit code and
// counts without repair, and with -r leaks / -r all a repaired image that
// qemu-img judges at least as well as the one qemu-img repaired itself.

// ckBaseOps makes the base image: data, a snapshot sharing most of it, and
// writes after the snapshot (guest 0..64k and 16M..16M+64k are unshared
// with COPIED set; 128k is shared with the snapshot).
var ckBaseOps = []string{"write -P 1 0 256k", "write -P 2 1M 64k", "write -P 3 8M 128k"}

const (
	ckUnshared = 0
	ckShared   = 128 << 10
	ckLate     = 16 << 20
)

// entryFor locates the L2 entry that maps guest offset g.
func (ti *ckImage) entryFor(g int64) (l1i int, l2off, entOff uint64, e uint64) {
	perL2 := ti.cs / 8
	vi := g / ti.cs
	l1i = int(vi / perL2)
	l2off, tbl := ti.l2(l1i)
	idx := vi % perL2
	return l1i, l2off, l2off + uint64(idx*8), tbl[idx]
}

func (ti *ckImage) cluster(off uint64) int64 { return int64(off / uint64(ti.cs)) }

type ckScenario struct {
	name string
	// intact: the damage touches only refcounts/flags, so a full repair
	// must give back the original guest data.
	intact bool
	damage func(t *testing.T, ti *ckImage)
}

func ckScenarios() []ckScenario {
	return []ckScenario{
		{"leak-free-clusters", true, func(t *testing.T, ti *ckImage) {
			size := ckFileSize(t, ti.path)
			n := (size + ti.cs - 1) / ti.cs
			if err := os.Truncate(ti.path, (n+3)*ti.cs); err != nil {
				t.Fatal(err)
			}
			for k := n; k < n+3; k++ {
				ti.setRefcount(k, 1)
			}
		}},
		{"leak-bump-data", true, func(t *testing.T, ti *ckImage) {
			_, _, _, e := ti.entryFor(ckUnshared)
			ti.setRefcount(ti.cluster(e&l2OffsetMask), 2)
		}},
		{"refcount-zero-data", true, func(t *testing.T, ti *ckImage) {
			_, _, _, e := ti.entryFor(ckUnshared)
			ti.setRefcount(ti.cluster(e&l2OffsetMask), 0)
		}},
		{"refcount-zero-l2", true, func(t *testing.T, ti *ckImage) {
			_, l2, _, _ := ti.entryFor(ckLate)
			ti.setRefcount(ti.cluster(l2), 0)
		}},
		{"refcount-low-shared", true, func(t *testing.T, ti *ckImage) {
			_, _, _, e := ti.entryFor(ckShared)
			ti.setRefcount(ti.cluster(e&l2OffsetMask), 1)
		}},
		{"refcount-zero-l1", true, func(t *testing.T, ti *ckImage) {
			ti.setRefcount(ti.cluster(ti.h.L1TableOffset), 0)
		}},
		{"refcount-zero-reftable", true, func(t *testing.T, ti *ckImage) {
			ti.setRefcount(ti.cluster(ti.h.RefcountTableOffset), 0)
		}},
		{"refcount-zero-header", true, func(t *testing.T, ti *ckImage) {
			ti.setRefcount(0, 0)
		}},
		{"refblock-self-zero", true, func(t *testing.T, ti *ckImage) {
			ti.setRefcount(ti.cluster(ti.rt[0]&refTableOffMask), 0)
		}},
		{"refblock-zeroed", true, func(t *testing.T, ti *ckImage) {
			ti.writeAt(ti.rt[0]&refTableOffMask, make([]byte, ti.cs))
		}},
		{"overlap-l2-entries", false, func(t *testing.T, ti *ckImage) {
			_, _, at, e := ti.entryFor(ckUnshared)
			ti.writeU64(at+8, e)
		}},
		{"overlap-l2-entry-on-l1", false, func(t *testing.T, ti *ckImage) {
			_, _, at, _ := ti.entryFor(ckLate)
			ti.writeU64(at, ti.h.L1TableOffset|oflagCopied)
		}},
		{"l1-misaligned", false, func(t *testing.T, ti *ckImage) {
			ti.writeU64(ti.h.L1TableOffset, ti.l1[0]+512)
		}},
		{"l1-beyond-eof", false, func(t *testing.T, ti *ckImage) {
			ti.writeU64(ti.h.L1TableOffset, uint64(1<<40)|oflagCopied)
		}},
		{"l1-reserved-bit", false, func(t *testing.T, ti *ckImage) {
			ti.writeU64(ti.h.L1TableOffset, ti.l1[0]|1<<58)
		}},
		{"l2-data-misaligned", false, func(t *testing.T, ti *ckImage) {
			_, _, at, e := ti.entryFor(ckLate)
			ti.writeU64(at, e+512)
		}},
		{"l2-zero-misaligned", false, func(t *testing.T, ti *ckImage) {
			_, _, at, e := ti.entryFor(ckLate)
			if ti.h.Version < 3 {
				ti.writeU64(at, e+512)
				return
			}
			ti.writeU64(at, e+512|oflagZero)
		}},
		{"l2-beyond-eof", false, func(t *testing.T, ti *ckImage) {
			_, _, at, _ := ti.entryFor(ckLate)
			ti.writeU64(at, uint64(1<<40)|oflagCopied)
		}},
		{"l2-reserved-bit", false, func(t *testing.T, ti *ckImage) {
			_, _, at, e := ti.entryFor(ckUnshared)
			ti.writeU64(at, e|1<<57)
		}},
		{"truncated", false, func(t *testing.T, ti *ckImage) {
			size := ckFileSize(t, ti.path)
			if err := os.Truncate(ti.path, size-2*ti.cs-ti.cs/2); err != nil {
				t.Fatal(err)
			}
		}},
		{"oflag-l2-cleared", true, func(t *testing.T, ti *ckImage) {
			_, _, at, e := ti.entryFor(ckUnshared)
			ti.writeU64(at, e&^oflagCopied)
		}},
		{"oflag-l1-cleared", true, func(t *testing.T, ti *ckImage) {
			l1i, _, _, _ := ti.entryFor(ckLate)
			ti.writeU64(ti.h.L1TableOffset+uint64(l1i)*8, ti.l1[l1i]&^oflagCopied)
		}},
		{"oflag-shared-set", true, func(t *testing.T, ti *ckImage) {
			_, _, at, e := ti.entryFor(ckShared)
			ti.writeU64(at, e|oflagCopied)
		}},
		{"reftable-misaligned", true, func(t *testing.T, ti *ckImage) {
			ti.writeU64(ti.h.RefcountTableOffset, ti.rt[0]+ti.rt[0]%uint64(ti.cs)+512)
		}},
		{"reftable-reserved", true, func(t *testing.T, ti *ckImage) {
			ti.writeU64(ti.h.RefcountTableOffset, ti.rt[0]|1)
		}},
		{"reftable-beyond-eof", true, func(t *testing.T, ti *ckImage) {
			n := (ckFileSize(t, ti.path) + ti.cs - 1) / ti.cs
			for i := 1; i < len(ti.rt); i++ {
				if ti.rt[i] == 0 {
					ti.writeU64(ti.h.RefcountTableOffset+uint64(i)*8, uint64(n+5)*uint64(ti.cs))
					return
				}
			}
			t.Skip("refcount table full")
		}},
		{"refblock-on-l2", false, func(t *testing.T, ti *ckImage) {
			_, l2, _, _ := ti.entryFor(ckLate)
			ti.writeU64(ti.h.RefcountTableOffset, l2)
		}},
		{"no-reftable", true, func(t *testing.T, ti *ckImage) {
			var b [4]byte
			ti.writeAt(56, b[:])
		}},
		{"corrupt-bit", true, func(t *testing.T, ti *ckImage) {
			if ti.h.Version < 3 {
				t.Skip("no feature bits in v2")
			}
			ti.setIncompat(ti.h.IncompatibleFeatures | incompatCorrupt)
		}},
		{"dirty-refblock-zeroed", true, func(t *testing.T, ti *ckImage) {
			if ti.h.Version < 3 {
				t.Skip("no feature bits in v2")
			}
			ti.writeAt(ti.rt[0]&refTableOffMask, make([]byte, ti.cs))
			ti.setIncompat(ti.h.IncompatibleFeatures | incompatDirty)
		}},
		{"refcount-overflow", false, func(t *testing.T, ti *ckImage) {
			_, _, at, e := ti.entryFor(ckLate)
			max := refcountMax(ti.h.RefcountOrder)
			if max > 64 {
				t.Skip("refcount too wide to overflow here")
			}
			for i := uint64(1); i <= max+1; i++ {
				ti.writeU64(at+8*i, e)
			}
		}},
		{"snapshot-l1-misaligned", false, func(t *testing.T, ti *ckImage) {
			off := ti.h.SnapshotsOffset
			ti.writeU64(off, ti.readU64(off)+512)
		}},
		{"snapshot-l1-beyond-eof", false, func(t *testing.T, ti *ckImage) {
			ti.writeU64(ti.h.SnapshotsOffset, 1<<40)
		}},
		{"snapshot-l1-too-large", false, func(t *testing.T, ti *ckImage) {
			var b [4]byte
			binary.BigEndian.PutUint32(b[:], maxSnapshotL1Entries+1)
			ti.writeAt(ti.h.SnapshotsOffset+8, b[:])
		}},
		{"snapshot-incomplete", true, func(t *testing.T, ti *ckImage) {
			if ti.h.Version < 3 {
				t.Skip("version 2 entries need no extra data")
			}
			// Rewrite the only entry with 8 bytes of extra data.
			off := ti.h.SnapshotsOffset
			hdr := ti.readAt(off, snapshotHeaderLen)
			extra := binary.BigEndian.Uint32(hdr[36:])
			idLen := int(binary.BigEndian.Uint16(hdr[12:]))
			nameLen := int(binary.BigEndian.Uint16(hdr[14:]))
			rest := ti.readAt(off+snapshotHeaderLen, int(extra)+idLen+nameLen)
			binary.BigEndian.PutUint32(hdr[36:], 8)
			e := append(append([]byte(nil), hdr...), rest[:8]...)
			e = append(e, rest[extra:]...)
			ti.writeAt(off, e)
		}},
		{"snapshot-extra-too-long", true, func(t *testing.T, ti *ckImage) {
			var b [4]byte
			binary.BigEndian.PutUint32(b[:], 2000)
			ti.writeAt(ti.h.SnapshotsOffset+36, b[:])
		}},
		{"snapshot-table-misaligned", false, func(t *testing.T, ti *ckImage) {
			ti.writeU64(64, ti.h.SnapshotsOffset+8)
		}},
		{"too-many-snapshots", false, func(t *testing.T, ti *ckImage) {
			var b [4]byte
			binary.BigEndian.PutUint32(b[:], maxSnapshots+1)
			ti.writeAt(60, b[:])
		}},
	}
}

var ckParityConfigs = []struct{ name, opts string }{
	{"64k-16", ""},
	{"512-2", "cluster_size=512,refcount_bits=2"},
	{"4k-64", "cluster_size=4096,refcount_bits=64"},
	{"v2-16k", "compat=0.10,cluster_size=16k"},
}

func TestCheckParity(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	for _, cfg := range ckParityConfigs {
		base := filepath.Join(dir, cfg.name+".qcow2")
		ckMake(t, base, cfg.opts, "32M", ckBaseOps...)
		ckRun(t, "qemu-img", "snapshot", "-c", "s1", base)
		ckQemuIO(t, base, "write -P 4 0 64k", fmt.Sprintf("write -P 5 %d 64k", ckLate))
		if r, _ := ckRequireSame(t, base); !r.Clean() {
			t.Fatalf("base image not clean: %v", r.Messages)
		}
		for _, sc := range ckScenarios() {
			if sc.name == "too-many-snapshots" && cfg.name != ckParityConfigs[0].name {
				continue // slow: 65536 garbage entries
			}
			t.Run(cfg.name+"/"+sc.name, func(t *testing.T) {
				p := filepath.Join(dir, cfg.name+"-"+sc.name+".qcow2")
				ckCopy(t, base, p)
				sc.damage(t, ckOpen(t, p))
				r, q := ckRequireSame(t, p)
				if q.Exit == 0 && sc.name != "corrupt-bit" {
					t.Fatalf("damage not detected by qemu-img")
				}
				if sc.name == "corrupt-bit" && !r.Clean() {
					t.Fatalf("the corrupt bit alone is not a finding")
				}
				for _, mode := range []RepairMode{RepairLeaks, RepairAll} {
					ckRepairParity(t, base, p, mode, sc.intact)
				}
			})
		}
	}
}

// ckRepairParity repairs copies of damaged with qemu-img and with Check
// and compares the outcomes.
func ckRepairParity(t *testing.T, orig, damaged string, mode RepairMode, intact bool) {
	t.Helper()
	a := damaged + "." + mode.String() + ".ours"
	b := damaged + "." + mode.String() + ".qemu"
	ckCopy(t, damaged, a)
	ckCopy(t, damaged, b)
	ours, err := Check(a, CheckOptions{Repair: mode})
	qr := ckQemuCheck(t, b, mode.String())
	if err != nil {
		if qr.Exit != 1 {
			t.Fatalf("Check -r %v: %v, but qemu-img check -r exits %d", mode, err, qr.Exit)
		}
		return
	}
	qa := ckQemuCheck(t, a, "") // qemu's verdict on our repair
	qb := ckQemuCheck(t, b, "") // ... and on its own
	detail := func() string {
		return fmt.Sprintf("-r %v\nours: exit=%d corruptions=%d leaks=%d errors=%d fixed c=%d l=%d; qemu on it: exit=%d c=%d l=%d\n  %s\nqemu repair: exit=%d corruptions=%d leaks=%d errors=%d fixed c=%d l=%d; after: exit=%d\n%s\n%s",
			mode, ours.ExitCode(), ours.Corruptions, ours.Leaks, ours.CheckErrors, ours.CorruptionsFixed, ours.LeaksFixed,
			qa.Exit, qa.Corruptions, qa.Leaks, strings.Join(ours.Messages, "\n  "),
			qr.Exit, qr.Corruptions, qr.Leaks, qr.CheckErrors, qr.CorruptionsFixed, qr.LeaksFixed, qb.Exit, qr.Stderr, qa.Stderr)
	}
	if ours.ExitCode() == 1 {
		// The repair run failed (e.g. -r leaks when the refcount
		// structure needs a rebuild): so must qemu's.
		if qr.Exit != 1 {
			t.Fatalf("our repair failed, qemu's did not: %s", detail())
		}
	} else if ours.ExitCode() != qa.Exit || ours.Corruptions != qa.Corruptions || ours.Leaks != qa.Leaks {
		// Our report on the repaired image is what qemu-img finds in it.
		t.Fatalf("our repair report disagrees with qemu-img check of the result: %s", detail())
	}
	if os.Getenv("CK_DEBUG") != "" {
		t.Log(detail())
	}
	// When both repairs ran to completion, they fixed the same number of
	// things.
	// (Not with bitmaps: opening an image with bitmaps read-write,
	// qemu-img check -r rewrites the header with the snapshot count it
	// skipped reading, i.e. it drops all internal snapshots, and then
	// repairs the refcounts accordingly. We keep the snapshots.)
	if qr.Exit != 1 && ours.ExitCode() != 1 && !ckHasMessage(ours, "could not resize image") && !ckHasBitmaps(damaged) &&
		(ours.CorruptionsFixed != qr.CorruptionsFixed || ours.LeaksFixed != qr.LeaksFixed) {
		t.Fatalf("fixed counts differ: %s", detail())
	}
	// At least as good as qemu's own repair.
	switch {
	case qa.Exit == qb.Exit:
	case qa.Exit == 0:
		t.Logf("our repair is better than qemu's: %s", detail())
	case qb.Exit == 1 || qr.Exit == 1:
		t.Logf("qemu's repair failed: %s", detail())
	default:
		t.Fatalf("repair outcome differs from qemu-img's: %s", detail())
	}
	if mode == RepairLeaks && qb.Exit != 1 && qb.Leaks == 0 && qa.Leaks != 0 {
		t.Fatalf("leaks remain after -r leaks: %s", detail())
	}
	if qa.Exit == 0 && qb.Exit == 0 {
		if out, err := exec.Command("qemu-img", "compare", "-q", a, b).CombinedOutput(); err != nil {
			// Damaged compressed clusters may not decompress: fine
			// if qemu's repaired image cannot be read either.
			errA := exec.Command("qemu-img", "convert", "-O", "raw", a, a+".raw").Run()
			errB := exec.Command("qemu-img", "convert", "-O", "raw", b, b+".raw").Run()
			if errA == nil || errB == nil {
				t.Fatalf("our repaired image differs from qemu's: %v %s", err, out)
			}
		}
		if intact && mode == RepairAll {
			if out, err := exec.Command("qemu-img", "compare", "-q", orig, a).CombinedOutput(); err != nil {
				t.Fatalf("repaired image differs from the original: %v %s", err, out)
			}
		}
		ti := ckOpen(t, a)
		if ti.h.IncompatibleFeatures&(incompatCorrupt|incompatDirty) != 0 {
			t.Fatalf("corrupt/dirty bit left set after a clean repair")
		}
	}
}

// entryFor16 locates the extended L2 entry (16 bytes) that maps guest
// offset g.
func (ti *ckImage) entryFor16(g int64) (entOff uint64, e, bitmap uint64) {
	perL2 := ti.cs / 16
	vi := g / ti.cs
	l2off := ti.l1[vi/perL2] & l1OffsetMask
	entOff = l2off + uint64(vi%perL2*16)
	v := ti.readU64s(entOff, 2)
	return entOff, v[0], v[1]
}

// bitmapTable returns the first bitmap's table offset and entries.
func (ti *ckImage) bitmapTable() (uint64, []uint64) {
	b := ti.h.Bitmaps
	if len(b) != 24 {
		ti.t.Fatal("no bitmaps extension")
	}
	dirOff := binary.BigEndian.Uint64(b[16:])
	d := ti.readAt(dirOff, 24)
	off := binary.BigEndian.Uint64(d[0:])
	n := binary.BigEndian.Uint32(d[8:])
	return off, ti.readU64s(off, int(n))
}

// TestCheckParityExtra: damage to compressed clusters, extended L2
// entries and persistent bitmaps.
func TestCheckParityExtra(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	type sc struct {
		name   string
		intact bool
		damage func(t *testing.T, ti *ckImage)
	}
	bases := []struct {
		name  string
		make  func(p string)
		cases []sc
	}{
		{"compressed", func(p string) {
			src := p + ".src"
			ckMake(t, src, "cluster_size=4k", "8M", "write -P 1 0 256k", "write -P 2 1M 8k")
			ckRun(t, "qemu-img", "convert", "-t", "unsafe", "-c", "-O", "qcow2", "-o", "cluster_size=4k", src, p)
			ckQemuIO(t, p, "write -P 3 2M 8k")
		}, []sc{
			{"copied-on-compressed", true, func(t *testing.T, ti *ckImage) {
				_, _, at, e := ti.entryFor(0)
				ti.writeU64(at, e|oflagCopied)
			}},
			{"compressed-beyond-eof", false, func(t *testing.T, ti *ckImage) {
				_, _, at, _ := ti.entryFor(4096)
				ti.writeU64(at, oflagCompressed|1<<40)
			}},
			{"compressed-refcount-zero", true, func(t *testing.T, ti *ckImage) {
				_, _, _, e := ti.entryFor(8192)
				ti.setRefcount(ti.cluster(e&(uint64(1)<<(62-(ti.h.ClusterBits-8))-1)), 0)
			}},
		}},
		{"extl2", func(p string) {
			ckMake(t, p, "extended_l2=on", "16M", "write -P 1 0 8k", "write -P 2 64k 64k", "write -z 256k 4k", "write -P 3 512k 64k")
		}, []sc{
			{"bitmap-alloc-and-zero", false, func(t *testing.T, ti *ckImage) {
				at, _, bm := ti.entryFor16(64 << 10)
				ti.writeU64(at+8, bm|1<<32)
			}},
			{"unallocated-with-bitmap", false, func(t *testing.T, ti *ckImage) {
				at, _, _ := ti.entryFor16(128 << 10)
				ti.writeU64(at+8, 3)
			}},
			{"compressed-with-bitmap", false, func(t *testing.T, ti *ckImage) {
				at, _, _ := ti.entryFor16(192 << 10)
				ti.writeU64(at, oflagCompressed|0x50000)
				ti.writeU64(at+8, 1)
			}},
			{"prealloc-misaligned", false, func(t *testing.T, ti *ckImage) {
				at, e, _ := ti.entryFor16(256 << 10)
				ti.writeU64(at, e+512)
			}},
			{"data-misaligned", false, func(t *testing.T, ti *ckImage) {
				at, e, _ := ti.entryFor16(512 << 10)
				ti.writeU64(at, e+512)
			}},
			{"refcount-zero", true, func(t *testing.T, ti *ckImage) {
				_, e, _ := ti.entryFor16(512 << 10)
				ti.setRefcount(ti.cluster(e&l2OffsetMask), 0)
			}},
			{"oflag-cleared", true, func(t *testing.T, ti *ckImage) {
				at, e, _ := ti.entryFor16(64 << 10)
				ti.writeU64(at, e&^oflagCopied)
			}},
		}},
		{"bitmaps", func(p string) {
			ckMake(t, p, "cluster_size=4k", "16M")
			ckRun(t, "qemu-img", "bitmap", "--add", p, "b0")
			ckQemuIO(t, p, "write -P 1 0 64k", "write -P 2 12M 64k")
		}, []sc{
			{"bitmap-table-reserved", false, func(t *testing.T, ti *ckImage) {
				off, _ := ti.bitmapTable()
				ti.writeU64(off, ti.readU64(off)|2)
			}},
			{"bitmap-data-refcount-zero", true, func(t *testing.T, ti *ckImage) {
				_, tbl := ti.bitmapTable()
				for _, e := range tbl {
					if off := e & bmeOffsetMask; off != 0 {
						ti.setRefcount(ti.cluster(off), 0)
						return
					}
				}
				t.Skip("no bitmap data cluster")
			}},
			{"bitmap-table-leak", true, func(t *testing.T, ti *ckImage) {
				off, _ := ti.bitmapTable()
				ti.setRefcount(ti.cluster(off), 3)
			}},
			{"bitmap-dir-misaligned", false, func(t *testing.T, ti *ckImage) {
				b := append([]byte(nil), ti.h.Bitmaps...)
				binary.BigEndian.PutUint64(b[16:], binary.BigEndian.Uint64(b[16:])+8)
				hdr := ti.readAt(0, int(ti.cs))
				i := bytes.Index(hdr, ti.h.Bitmaps)
				if i < 0 {
					t.Fatal("bitmaps extension not found")
				}
				ti.writeAt(uint64(i), b)
			}},
		}},
	}
	for _, b := range bases {
		base := filepath.Join(dir, b.name+".qcow2")
		b.make(base)
		if r, _ := ckRequireSame(t, base); !r.Clean() {
			t.Fatalf("%s: base image not clean: %v", b.name, r.Messages)
		}
		for _, c := range b.cases {
			t.Run(b.name+"/"+c.name, func(t *testing.T) {
				p := filepath.Join(dir, b.name+"-"+c.name+".qcow2")
				ckCopy(t, base, p)
				c.damage(t, ckOpen(t, p))
				if _, q := ckRequireSame(t, p); q.Exit == 0 {
					t.Fatal("damage not detected by qemu-img")
				}
				for _, mode := range []RepairMode{RepairLeaks, RepairAll} {
					ckRepairParity(t, base, p, mode, c.intact)
				}
			})
		}
	}
}

// TestCheckRandomDamage flips random bytes in the metadata of QEMU images
// (snapshots, compressed clusters, bitmaps, extended L2, 1-bit refcounts,
// version 2): Check never panics, agrees with qemu-img check, and its repair
// never does worse than qemu-img's.
func TestCheckRandomDamage(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	bases := []struct {
		name string
		make func(t *testing.T, p string)
	}{
		{"4k-8-compressed-snapshot", func(t *testing.T, p string) {
			src := p + ".src"
			ckMake(t, src, "cluster_size=4k", "4M", "write -P 1 0 64k", "write -P 2 1M 16k")
			ckRun(t, "qemu-img", "convert", "-t", "unsafe", "-c", "-O", "qcow2", "-o", "cluster_size=4k,refcount_bits=8", src, p)
			ckQemuIO(t, p, "write -P 3 8k 8k", "write -P 4 2M 20k")
			ckRun(t, "qemu-img", "snapshot", "-c", "s1", p)
			ckQemuIO(t, p, "write -P 5 0 4k", "write -P 6 3M 4k")
		}},
		{"512-1", func(t *testing.T, p string) {
			ckMake(t, p, "cluster_size=512,refcount_bits=1", "1M", "write -P 1 0 8k", "write -P 2 300k 2k", "write -z 600k 4k")
		}},
		{"64k-64-extl2-bitmap-snapshot", func(t *testing.T, p string) {
			ckMake(t, p, "extended_l2=on,refcount_bits=64", "8M", "write -P 1 0 8k", "write -P 2 1M 64k", "write -z 2M 4k")
			ckRun(t, "qemu-img", "bitmap", "--add", p, "b0")
			ckQemuIO(t, p, "write -P 3 3M 128k")
			ckRun(t, "qemu-img", "snapshot", "-c", "s1", p)
			ckQemuIO(t, p, "write -P 4 0 4k")
		}},
		{"v2-16k-snapshot", func(t *testing.T, p string) {
			ckMake(t, p, "compat=0.10,cluster_size=16k", "4M", "write -P 1 0 64k", "write -P 2 1M 16k")
			ckRun(t, "qemu-img", "snapshot", "-c", "s1", p)
			ckQemuIO(t, p, "write -P 5 0 16k", "write -P 6 3M 4k")
		}},
	}
	iters := 40
	if testing.Short() {
		iters = 8
	}
	seed := uint64(0x9e3779b97f4a7c15)
	// CK_SEED and CK_ITERS explore further.
	if v := os.Getenv("CK_SEED"); v != "" {
		fmt.Sscan(v, &seed)
	}
	if v := os.Getenv("CK_ITERS"); v != "" {
		fmt.Sscan(v, &iters)
	}
	for _, b := range bases {
		t.Run(b.name, func(t *testing.T) {
			dir := t.TempDir()
			base := filepath.Join(dir, "base.qcow2")
			b.make(t, base)
			ckRandomDamage(t, dir, base, seed, iters)
		})
	}
}

func ckRandomDamage(t *testing.T, dir, base string, rng uint64, iters int) {
	ti := ckOpen(t, base)
	if r, _ := ckRequireSame(t, base); !r.Clean() {
		t.Fatalf("base image not clean: %v", r.Messages)
	}
	// Metadata clusters.
	meta := []uint64{0, ti.h.L1TableOffset, ti.h.RefcountTableOffset}
	if ti.h.SnapshotsOffset != 0 {
		meta = append(meta, ti.h.SnapshotsOffset)
	}
	for _, e := range ti.l1 {
		if off := e & l1OffsetMask; off != 0 {
			meta = append(meta, off)
		}
	}
	for _, e := range ti.rt {
		if off := e & refTableOffMask; off != 0 {
			meta = append(meta, off)
		}
	}
	if len(ti.h.Bitmaps) == 24 {
		meta = append(meta, binary.BigEndian.Uint64(ti.h.Bitmaps[16:]))
		off, _ := ti.bitmapTable()
		meta = append(meta, off)
	}
	orig, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	next := func(n uint64) uint64 {
		rng ^= rng << 13
		rng ^= rng >> 7
		rng ^= rng << 17
		return rng % n
	}
	for i := 0; i < iters; i++ {
		img := append([]byte(nil), orig...)
		// A wild refcount table entry or header pointer makes
		// qemu-img check -r grow the file to terabytes (and take
		// minutes): damage those only in check-only rounds.
		repair := i%3 != 0
		for n := next(4) + 1; n > 0; n-- {
			c := meta[next(uint64(len(meta)))]
			if repair && (c == ti.h.RefcountTableOffset || c == 0) {
				continue
			}
			var off uint64
			if c == 0 {
				off = 32 + next(40) // header fields past the magic and version
			} else {
				off = c + next(uint64(ti.cs))
			}
			if off < uint64(len(img)) {
				img[off] ^= byte(1 << next(8))
			}
		}
		p := filepath.Join(dir, fmt.Sprintf("d%d.qcow2", i))
		if err := os.WriteFile(p, img, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			ckRequireSame(t, p)
			if repair {
				ckRepairParity(t, base, p, RepairAll, false)
			}
		})
	}
}

func ckHasMessage(r *CheckResult, sub string) bool {
	for _, m := range r.Messages {
		if strings.Contains(m, sub) {
			return true
		}
	}
	return false
}

func ckHasBitmaps(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	h, err := readCheckHeader(NewOSFile(f))
	return err == nil && h.Bitmaps != nil
}
