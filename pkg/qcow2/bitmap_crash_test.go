package qcow2_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/crashsim"
	"github.com/csi-qcow2/csi-qcow2/internal/qemutest"
	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// Every crash state of a session that maintains bitmaps (open, writes,
// close) checks clean but for leaks, and every bitmap is either in use or
// consistent: each guest byte that differs from the original image lies in
// a dirty range of every enabled consistent bitmap. qemu-img check agrees on
// a sample of the states.
func TestBitmapsCrashStates(t *testing.T) {
	p := bmImage(t)
	base, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	r := crashsim.NewRecorder(base)
	img, err := qcow2.OpenFile(r, p, qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	bmWrites(t, img)
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	rec := r.Recording()
	states := rec.States(crashsim.Plan{Seed: 7, ReorderedPerEpoch: 12, Prefixes: 30})
	written := [][2]int64{{1 * mib, 4096}, {10*mib + 60*kib, 8192}}
	dir := t.TempDir()
	consistentSeen := 0
	for i, s := range states {
		data := rec.Materialize(s)
		res, err := qcow2.CheckFile(crashsim.NewRecorder(data), qcow2.CheckOptions{})
		if err != nil || res.Corruptions != 0 || res.CheckErrors != 0 || (res.ExitCode() != 0 && res.ExitCode() != 3) {
			t.Fatalf("%s: check %v %+v", s, err, res)
		}
		if i%10 == 0 {
			path := filepath.Join(dir, "state.qcow2")
			if err := os.WriteFile(path, data, 0o644); err != nil {
				t.Fatal(err)
			}
			q := qemutest.Check(t, path, "qcow2", "")
			if q.ExitCode != res.ExitCode() || q.Leaks != int64(res.Leaks) {
				t.Fatalf("%s: qemu-img check %s; engine %+v", s, q.Output, *res)
			}
		}
		ro, err := qcow2.OpenFile(crashsim.NewRecorder(data), p, qcow2.Options{ReadOnly: true})
		if err != nil {
			t.Fatalf("%s: open: %v", s, err)
		}
		bms, err := ro.Bitmaps()
		if err != nil || len(bms) != 3 {
			t.Fatalf("%s: bitmaps %v %v", s, bms, err)
		}
		for _, b := range bms {
			if b.InUse {
				if b.Name == "b2" {
					t.Fatalf("%s: the disabled bitmap is in use", s)
				}
				continue
			}
			dirty, err := ro.BitmapDirty(b.Name)
			if err != nil {
				t.Fatalf("%s: %s: %v", s, b.Name, err)
			}
			if b.Name == "b2" {
				if dirty != nil {
					t.Fatalf("%s: the disabled bitmap changed: %v", s, dirty)
				}
				continue
			}
			if dirty != nil {
				consistentSeen++
			}
			for _, w := range written {
				got := make([]byte, w[1])
				if _, err := ro.ReadAt(got, w[0]); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, make([]byte, w[1])) && !covered(dirty, w[0], w[1]) {
					t.Fatalf("%s: %s is consistent but misses the write at %d (dirty %v)", s, b.Name, w[0], dirty)
				}
			}
		}
		_ = ro.Close()
	}
	if consistentSeen == 0 {
		t.Fatal("no crash state had the stored bitmaps: the test saw nothing")
	}
}

func covered(ranges [][2]int64, off, n int64) bool {
	for _, r := range ranges {
		if r[0] <= off && off+n <= r[0]+r[1] {
			return true
		}
	}
	return false
}

// Adding the first bitmap to an overlay (the extension is added to the
// header and the backing file name moves out of its way) and removing the
// last one (the extension is removed): every crash state opens with the
// same backing file, checks clean but for leaks, and lists either no
// bitmap or the new one; qemu-img agrees on a sample.
func TestBitmapsCrashStatesAddRemove(t *testing.T) {
	testtools.Need(t, "qemu-img")
	dir := t.TempDir()
	qemutest.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", filepath.Join(dir, "base.qcow2"), "16M")
	p := filepath.Join(dir, "top.qcow2")
	qemutest.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", p)
	opts := qcow2.Options{Backing: qcow2.BackingPolicy{Root: dir}}
	base, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	r := crashsim.NewRecorder(base)
	img, err := qcow2.OpenFile(r, p, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := img.AddBitmap("n", 0, false); err != nil {
		t.Fatal(err)
	}
	if _, err := img.WriteAt([]byte{1}, 5*mib); err != nil {
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	added := r.Recording()
	checkAddRemoveStates(t, added, dir, p, func(bms []qcow2.BitmapInfo) bool {
		return len(bms) == 0 || len(bms) == 1 && bms[0].Name == "n"
	})

	r = crashsim.NewRecorder(added.Replay(len(added.Ops())))
	if img, err = qcow2.OpenFile(r, p, opts); err != nil {
		t.Fatal(err)
	}
	if err := img.RemoveBitmap("n"); err != nil {
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	checkAddRemoveStates(t, r.Recording(), dir, p, func(bms []qcow2.BitmapInfo) bool {
		return len(bms) == 0 || len(bms) == 1 && bms[0].Name == "n"
	})
}

func checkAddRemoveStates(t *testing.T, rec *crashsim.Recording, dir, name string, listOK func([]qcow2.BitmapInfo) bool) {
	t.Helper()
	states := rec.States(crashsim.Plan{Seed: 3, ReorderedPerEpoch: 8, Prefixes: 20})
	sawBitmap := false
	for i, s := range states {
		data := rec.Materialize(s)
		res, err := qcow2.CheckFile(crashsim.NewRecorder(data), qcow2.CheckOptions{})
		if err != nil || res.Corruptions != 0 || res.CheckErrors != 0 || (res.ExitCode() != 0 && res.ExitCode() != 3) {
			t.Fatalf("%s: check %v %+v", s, err, res)
		}
		ro, err := qcow2.OpenFile(crashsim.NewRecorder(data), name, qcow2.Options{ReadOnly: true, NoBacking: true})
		if err != nil {
			t.Fatalf("%s: open: %v", s, err)
		}
		if got := ro.Header().BackingFile; got != "base.qcow2" {
			t.Fatalf("%s: backing file %q", s, got)
		}
		bms, err := ro.Bitmaps()
		if err != nil || !listOK(bms) {
			t.Fatalf("%s: bitmaps %v %v", s, bms, err)
		}
		sawBitmap = sawBitmap || len(bms) > 0
		_ = ro.Close()
		if i%8 == 0 {
			path := filepath.Join(dir, "state.qcow2")
			if err := os.WriteFile(path, data, 0o644); err != nil {
				t.Fatal(err)
			}
			if q := qemutest.Check(t, path, "qcow2", ""); q.ExitCode != res.ExitCode() {
				t.Fatalf("%s: qemu-img check %s; engine %+v", s, q.Output, *res)
			}
			qemutest.Run(t, "qemu-img", "info", path)
		}
	}
	if !sawBitmap {
		t.Fatal("no crash state had the bitmap: the test saw nothing")
	}
}
