package qcow2_test

// Crash states of a compat change (amend -o compat=0.10 / 1.1): the guest
// content never changes, so every crash state must open, check clean
// (leaks allowed) and read exactly what the image read before, whatever
// version its header says. The downgrade is the interesting direction:
// zero clusters are expanded (preallocated ones zeroed in place, others
// deallocated or given a fresh cluster over a backing file) before the
// header says version 2, which reads no zero flags.

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/crashsim"
	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

func TestCrashStatesAmendCompat(t *testing.T) {
	qemuImg := testtools.Need(t, "qemu-img")[0]
	for _, c := range []struct {
		name     string
		lazy     bool
		backing  bool
		from, to string
	}{
		{"down", false, false, "1.1", "0.10"},
		{"down-lazy", true, false, "1.1", "0.10"},
		{"down-backing", false, true, "1.1", "0.10"},
		{"up-backing", false, true, "0.10", "1.1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			const cs, size = 4096, 256 << 10
			dir := crashTempDir(t)
			opts := qcow2.CreateOptions{Size: size, ClusterSize: cs, LazyRefcounts: c.lazy, Compat: c.from}
			if c.backing {
				base := make([]byte, size)
				for b := range base {
					base[b] = tag(0, int64(b))
				}
				if err := os.WriteFile(filepath.Join(dir, "base.raw"), base, 0o444); err != nil {
					t.Fatal(err)
				}
				opts.BackingFile, opts.BackingFormat = "base.raw", "raw"
			}
			r := crashsim.NewRecorder(nil)
			name := filepath.Join(dir, "top.qcow2")
			if err := qcow2.CreateFile(r, name, opts); err != nil {
				t.Fatal(err)
			}
			r.Reopen()
			img, err := qcow2.OpenFile(r, name, qcow2.Options{})
			if err != nil {
				t.Fatal(err)
			}
			// Data everywhere, then zero clusters of both kinds: kept
			// allocations (unmap false) and plain zero flags.
			data := make([]byte, size)
			for b := range data {
				data[b] = tag(1, int64(b))
			}
			if _, err := img.WriteAt(data[:size/2], 0); err != nil {
				t.Fatal(err)
			}
			for i, z := range []struct {
				off, n int64
				unmap  bool
			}{{0, 3 * cs, false}, {8 * cs, 2 * cs, true}, {20 * cs, 4 * cs, false}, {40 * cs, 8 * cs, true}, {size - 4*cs, 2 * cs, true}} {
				if err := img.WriteZeroes(z.off, z.n, z.unmap); err != nil {
					t.Fatalf("zeroes %d: %v", i, err)
				}
			}
			want := make([]byte, size)
			if _, err := img.ReadAt(want, 0); err != nil {
				t.Fatal(err)
			}
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}

			rec := recordOp(t, r, name, qcow2.Options{}, setCompat(c.to))
			states := rec.States(crashsim.Plan{Seed: 7, ReorderedPerEpoch: 20, Prefixes: 20})
			states = pickStates(states, 60, 7)
			var final []byte
			for _, s := range states {
				buf := rec.Materialize(s)
				if err := checkAmendState(dir, s, buf, want, qemuImg, s.Index%6 == 0 || s.Durable == len(rec.Ops())); err != nil {
					t.Errorf("%v", err)
				}
				if s.Durable == len(rec.Ops()) {
					final = buf
				}
			}
			if v, w := final[7], map[string]byte{"0.10": 2, "1.1": 3}[c.to]; v != w {
				t.Errorf("final state has version %d, want %d", v, w)
			}
			t.Logf("%d operations, %d crash states checked", len(rec.Ops()), len(states))
		})
	}
}

// checkAmendState writes one crash state next to the backing file and
// checks that it opens, checks clean (leaks allowed) and reads want.
func checkAmendState(dir string, s crashsim.State, buf, want []byte, qemuImg string, withQemu bool) error {
	path := filepath.Join(dir, fmt.Sprintf("crash-%d.qcow2", s.Index))
	if err := os.WriteFile(path, buf, 0o644); err != nil {
		return err
	}
	defer os.Remove(path)
	if !dirtyBit(buf) {
		if err := checkImage(path, qemuImg, withQemu, false, false); err != nil {
			return fmt.Errorf("%v (version %d): %w", s, buf[7], err)
		}
	}
	img, err := qcow2.Open(path, qcow2.Options{ReadOnly: !dirtyBit(buf)})
	if err != nil {
		return fmt.Errorf("%v: open: %w", s, err)
	}
	got := make([]byte, img.Size())
	_, err = img.ReadAt(got, 0)
	img.Close()
	if err != nil {
		return fmt.Errorf("%v: read: %w", s, err)
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("%v (version %d): guest content differs at byte %d", s, buf[7], firstDiff(got, want))
	}
	return nil
}

// setCompat is the operation of the compat crash tests.
func setCompat(to string) func(*qcow2.Image) error {
	return func(img *qcow2.Image) error {
		if err := img.SetCompat(to); err != nil {
			return fmt.Errorf("SetCompat(%s): %w", to, err)
		}
		return nil
	}
}
