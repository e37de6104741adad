package qcow2_test

// Crash states of the subcluster write paths that the random crash
// workloads reach only now and then: each scenario prepares an extended
// L2 image, flushes, and records one write; every crash state of that
// write must read, byte by byte, either what the flush covered or what
// the write wrote.

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/crashsim"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

type extCrashScenario struct {
	name    string
	backing bool // a raw backing file of non-zero bytes
	// prepare runs before the flush that starts the recorded part.
	prepare func(t *testing.T, img *qcow2.Image)
	off     int64 // the recorded write: 10 bytes of 0x77 at off
}

func TestCrashExtendedL2Subclusters(t *testing.T) {
	const cs, sc = 16 << 10, 512
	x := bytes.Repeat([]byte{0x58}, sc)
	write := func(t *testing.T, img *qcow2.Image, p []byte, off int64) {
		if _, err := img.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
	}
	for _, sn := range []extCrashScenario{
		{
			// A zeroed subcluster keeps its old bytes in the host
			// cluster: the rewrite must not let them show.
			name: "rewrite-zeroed-subcluster",
			prepare: func(t *testing.T, img *qcow2.Image) {
				write(t, img, x, 3*sc)
				if err := img.Flush(); err != nil {
					t.Fatal(err)
				}
				if err := img.WriteZeroes(3*sc, sc, false); err != nil {
					t.Fatal(err)
				}
			},
			off: 3*sc + 100,
		},
		{
			name: "rewrite-discarded-subcluster",
			prepare: func(t *testing.T, img *qcow2.Image) {
				write(t, img, x, cs+3*sc)
				write(t, img, x, cs+7*sc)
				if err := img.Flush(); err != nil {
					t.Fatal(err)
				}
				if err := img.Discard(cs+3*sc, sc); err != nil {
					t.Fatal(err)
				}
			},
			off: cs + 3*sc + 200,
		},
		{
			// A new subcluster over backing data: the copied rest of
			// the subcluster must be durable before the entry. (The L2
			// table exists already, so that the recorded write is just
			// data and entry, and every order of the two is a state.)
			name: "new-cluster-over-backing", backing: true,
			prepare: func(t *testing.T, img *qcow2.Image) { write(t, img, x, 0) },
			off:     2*cs + 9*sc + 50,
		},
		{
			name: "new-subcluster-in-allocated-cluster-over-backing", backing: true,
			prepare: func(t *testing.T, img *qcow2.Image) { write(t, img, x, 2*cs) },
			off:     2*cs + 20*sc + 5,
		},
		{
			// Copy-on-write of a cluster shared with a snapshot: the
			// stored subclusters move to the new cluster.
			name: "snapshot-cow-carries-subclusters",
			prepare: func(t *testing.T, img *qcow2.Image) {
				write(t, img, x, 0)
				write(t, img, x, 30*sc)
				if _, err := img.CreateSnapshot("s"); err != nil {
					t.Fatal(err)
				}
				write(t, img, x, 3*cs) // copies the shared L2 table
			},
			off: 5 * sc,
		},
	} {
		t.Run(sn.name, func(t *testing.T) { extCrashRun(t, sn) })
	}
}

func extCrashRun(t *testing.T, sn extCrashScenario) {
	const size = 256 << 10
	dir := t.TempDir()
	opts := qcow2.CreateOptions{Size: size, ClusterSize: 16 << 10, ExtendedL2: true}
	if sn.backing {
		base := make([]byte, size)
		for i := range base {
			base[i] = 0xb0 + byte(i%11)
		}
		if err := os.WriteFile(filepath.Join(dir, "base.raw"), base, 0o444); err != nil {
			t.Fatal(err)
		}
		opts.BackingFile, opts.BackingFormat = "base.raw", "raw"
	}
	name := filepath.Join(dir, "top.qcow2")
	r := crashsim.NewRecorder(nil)
	if err := qcow2.CreateFile(r, name, opts); err != nil {
		t.Fatal(err)
	}
	r.Reopen()
	img, err := qcow2.OpenFile(r, name, qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if sn.prepare != nil {
		sn.prepare(t, img)
	}
	if err := img.Flush(); err != nil {
		t.Fatal(err)
	}
	before := make([]byte, size)
	if _, err := img.ReadAt(before, 0); err != nil {
		t.Fatal(err)
	}
	from := r.Len()
	y := bytes.Repeat([]byte{0x77}, 10)
	if _, err := img.WriteAt(y, sn.off); err != nil {
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	after := bytes.Clone(before)
	copy(after[sn.off:], y)

	rec := r.Recording().Since(from)
	states := rec.States(crashsim.Plan{Seed: 7, ReorderedPerEpoch: 200, Prefixes: 30})
	for _, s := range states {
		if err := extCrashCheck(filepath.Join(dir, fmt.Sprintf("crash-%d.qcow2", s.Index)), rec.Materialize(s), before, after); err != nil {
			t.Fatalf("%v: %v", s, err)
		}
	}
	t.Logf("%d crash states of %d recorded operations", len(states), len(rec.Ops()))
}

// extCrashCheck opens a crash state and compares every guest byte with
// the content before and after the recorded write.
func extCrashCheck(path string, data, before, after []byte) error {
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return err
	}
	defer os.Remove(path)
	img, err := qcow2.Open(path, qcow2.Options{ReadOnly: true})
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	defer img.Close()
	got := make([]byte, len(before))
	if _, err := img.ReadAt(got, 0); err != nil {
		return fmt.Errorf("read: %w", err)
	}
	for i := range got {
		if got[i] != before[i] && got[i] != after[i] {
			return fmt.Errorf("guest byte %d reads %#x: neither the flushed %#x nor the written %#x", i, got[i], before[i], after[i])
		}
	}
	return nil
}
