package qcow2_test

import (
	"encoding/binary"
	"path/filepath"
	"strings"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/crashsim"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// Adding the first bitmap appends the extension at the end marker. Here
// that marker sits at byte 488 (an unknown extension pads the header; no
// feature name table) and a long backing file name follows it, so the
// appended extension crosses the sector boundary at 512 and the name must
// move away first. However a write into cluster 0 tears, every state opens
// with the same backing file and checks clean but for leaks.
func TestCrashHeaderTearsBitmapAppend(t *testing.T) {
	const cs = 4096
	dir := crashTempDir(t)
	name := filepath.Join(dir, "top.qcow2")
	backing := strings.Repeat("b", 56) + ".raw"
	r := crashsim.NewRecorder(nil)
	if err := qcow2.CreateFile(r, name, qcow2.CreateOptions{Size: 16 * cs, ClusterSize: cs, BackingFile: backing, BackingFormat: "raw", Unsafe: true}); err != nil {
		t.Fatal(err)
	}
	r.Reopen()
	// Cluster 0 from byte 128 (after the backing format extension): an
	// unknown extension of 352 bytes, the end marker at 488, the name at 496.
	buf := r.Bytes()
	be := binary.BigEndian
	if be.Uint32(buf[112:]) != 0xe2792aca || be.Uint32(buf[116:]) != 3 {
		t.Fatalf("unexpected header layout: extension %#x at 112", be.Uint32(buf[112:]))
	}
	clear(buf[128:cs])
	be.PutUint32(buf[128:], 0x7e57e57e)
	be.PutUint32(buf[132:], 352)
	copy(buf[496:], backing)
	be.PutUint64(buf[8:], 496)
	r = crashsim.NewRecorder(buf)

	img, err := qcow2.OpenFile(r, name, qcow2.Options{NoBacking: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := img.AddBitmap("n", 0, false); err != nil {
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	rec := r.Recording()
	states := rec.States(crashsim.Plan{})
	tears := headerTears(rec, cs)
	check := func(label string, data []byte) {
		res, err := qcow2.CheckFile(crashsim.NewRecorder(data), qcow2.CheckOptions{})
		if err != nil || res.Corruptions != 0 || res.CheckErrors != 0 {
			t.Errorf("%s: check %v %+v", label, err, res)
			return
		}
		img, err := qcow2.OpenFile(crashsim.NewRecorder(data), name, qcow2.Options{ReadOnly: true, NoBacking: true})
		if err != nil {
			t.Errorf("%s: open: %v", label, err)
			return
		}
		defer img.Close()
		if got := img.Header().BackingFile; got != backing {
			t.Errorf("%s: backing file %q", label, got)
		}
	}
	for _, s := range states {
		check(s.String(), rec.Materialize(s))
	}
	for _, tr := range tears {
		check(tr.String(), tr.buf)
	}
	final := rec.Materialize(states[len(states)-1])
	if img, err := qcow2.OpenFile(crashsim.NewRecorder(final), name, qcow2.Options{ReadOnly: true, NoBacking: true}); err != nil {
		t.Fatal(err)
	} else if bms, err := img.Bitmaps(); err != nil || len(bms) != 1 {
		t.Errorf("final state: bitmaps %v %v", bms, err)
	}
	t.Logf("%d operations, %d states, %d torn header writes checked", len(rec.Ops()), len(states), len(tears))
}
