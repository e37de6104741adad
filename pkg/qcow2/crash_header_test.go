package qcow2_test

// Helpers for crash states of header rewrites, and the torn-header states
// of a compat change.

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/crashsim"
	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// openCrashState writes the crash state buf into dir, checks it (leaks
// allowed; qemu-img check too if withQemu) unless its dirty bit is set,
// and returns its header and guest content.
func openCrashState(dir string, s fmt.Stringer, buf []byte, qemuImg string, withQemu bool) (qcow2.Header, []byte, error) {
	path := filepath.Join(dir, "crash.qcow2")
	if err := os.WriteFile(path, buf, 0o644); err != nil {
		return qcow2.Header{}, nil, err
	}
	defer os.Remove(path)
	if !dirtyBit(buf) {
		if err := checkImage(path, qemuImg, withQemu, false, false); err != nil {
			return qcow2.Header{}, nil, fmt.Errorf("%v (version %d, backing %q): %w", s, buf[7], headerBacking(buf), err)
		}
	}
	img, err := qcow2.Open(path, qcow2.Options{ReadOnly: !dirtyBit(buf)})
	if err != nil {
		return qcow2.Header{}, nil, fmt.Errorf("%v: open: %w", s, err)
	}
	defer img.Close()
	got := make([]byte, img.Size())
	if _, err := img.ReadAt(got, 0); err != nil {
		return qcow2.Header{}, nil, fmt.Errorf("%v: read: %w", s, err)
	}
	return img.Header(), got, nil
}

// headerTear is cluster 0 after a write into it persisted only in part.
type headerTear struct {
	op   int
	kept string
	buf  []byte
}

func (h headerTear) String() string { return fmt.Sprintf("op %d torn (%s persisted)", h.op, h.kept) }

// headerTears returns, for every write into cluster 0, the file after the
// operations before it and that write torn: each sector it changes alone,
// all of them but one, and each prefix of them.
func headerTears(rec *crashsim.Recording, cs int64) []headerTear {
	var out []headerTear
	for i, op := range rec.Ops() {
		if op.Kind != crashsim.OpWrite || op.Off >= cs {
			continue
		}
		pre := rec.Replay(i)
		var changed []int64 // sector numbers
		for sec := op.Off / crashsim.SectorSize; sec*crashsim.SectorSize < op.Off+op.N; sec++ {
			lo, hi := max(op.Off, sec*crashsim.SectorSize), min(op.Off+op.N, (sec+1)*crashsim.SectorSize)
			if hi > int64(len(pre)) || !bytes.Equal(pre[lo:hi], op.Data[lo-op.Off:hi-op.Off]) {
				changed = append(changed, sec)
			}
		}
		apply := func(kept string, secs ...int64) {
			buf := bytes.Clone(pre)
			for _, sec := range secs {
				lo, hi := max(op.Off, sec*crashsim.SectorSize), min(op.Off+op.N, (sec+1)*crashsim.SectorSize)
				if hi > int64(len(buf)) {
					buf = append(buf, make([]byte, hi-int64(len(buf)))...)
				}
				copy(buf[lo:hi], op.Data[lo-op.Off:hi-op.Off])
			}
			out = append(out, headerTear{i, kept, buf})
		}
		for j, sec := range changed {
			apply(fmt.Sprintf("sector %d only", sec), sec)
			apply(fmt.Sprintf("all but sector %d", sec), append(append([]int64(nil), changed[:j]...), changed[j+1:]...)...)
			apply(fmt.Sprintf("sectors before %d", sec), changed[:j]...)
		}
	}
	return out
}

// headerBacking is the backing file name a header in buf points at, for
// failure messages.
func headerBacking(buf []byte) string {
	off, n := binary.BigEndian.Uint64(buf[8:]), uint64(binary.BigEndian.Uint32(buf[16:]))
	if off == 0 || off+n > uint64(len(buf)) || n > 1024 {
		return fmt.Sprintf("<offset %d size %d>", off, n)
	}
	return string(buf[off : off+n])
}

// A compat change rewrites the header with another layout (72 or 112
// bytes of fields, with or without the feature name table): every way a
// write into cluster 0 can tear, and every sync boundary, must leave a
// header of the old or the new version that reads the same guest content.
func TestCrashHeaderTearsAmendCompat(t *testing.T) {
	qemuImg := testtools.Need(t, "qemu-img")[0]
	for _, c := range []struct {
		name        string
		cs          int64
		qemuCreated bool
		from, to    string
	}{
		{"down", 4096, false, "1.1", "0.10"},
		{"up", 4096, false, "0.10", "1.1"},
		{"qemu-down", 65536, true, "1.1", "0.10"},
		{"qemu-up", 65536, true, "0.10", "1.1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cs, size := c.cs, crashTopClusters*c.cs
			dir := crashTempDir(t)
			makeRebaseBackings(t, dir, qemuImg, size)
			r := newCrashTop(t, qemuImg, dir, rebaseCrashCase{cs: cs, compat: c.from, qemuCreated: c.qemuCreated, from: "a.raw", fromFmt: "raw"})
			name := filepath.Join(dir, "top.qcow2")
			want := writeCrashTop(t, r, name, cs, size, c.from == "1.1")

			rec := recordOp(t, r, name, qcow2.Options{}, setCompat(c.to))
			versions := map[uint32]bool{map[string]uint32{"0.10": 2, "1.1": 3}[c.from]: true, map[string]uint32{"0.10": 2, "1.1": 3}[c.to]: true}
			var states []fmt.Stringer
			var bufs [][]byte
			for _, s := range rec.States(crashsim.Plan{Prefixes: 4}) {
				states, bufs = append(states, s), append(bufs, rec.Materialize(s))
			}
			for _, tr := range headerTears(rec, cs) {
				states, bufs = append(states, tr), append(bufs, tr.buf)
			}
			for i, s := range states {
				h, got, err := openCrashState(dir, s, bufs[i], qemuImg, i%4 == 0)
				switch {
				case err != nil:
					t.Errorf("%v", err)
				case !versions[h.Version]:
					t.Errorf("%v: version %d", s, h.Version)
				case h.BackingFile != "a.raw" || h.BackingFormat != "raw":
					t.Errorf("%v: backing file %q (%q)", s, h.BackingFile, h.BackingFormat)
				case !bytes.Equal(got, want):
					t.Errorf("%v (version %d): guest content differs at byte %d", s, h.Version, firstDiff(got, want))
				}
			}
			if v, w := r.Bytes()[7], map[string]byte{"0.10": 2, "1.1": 3}[c.to]; v != w {
				t.Errorf("final version %d, want %d", v, w)
			}
			t.Logf("%d operations, %d crash states checked", len(rec.Ops()), len(states))
		})
	}
}
