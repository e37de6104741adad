package qcow2_test

// Crash states of snapshot operations and compressed writes (issue 3): the
// harness of crash_test.go with a workload that mixes guest writes, zeroing,
// discards, flushes and reopens with CreateSnapshot, DeleteSnapshot,
// ApplySnapshot and WriteCompressedClusters. Besides the rules of
// TestCrashStates every crash state must satisfy (checkSnapshots):
//
//	(f) a snapshot that exists reads as the guest content when it was
//	    created, and only snapshots whose creation had started exist;
//	(g) a snapshot whose creation was durable exists unless its deletion
//	    had started; one whose deletion was durable does not.
//
// ApplySnapshot is modelled as a guest operation that writes the
// snapshot's content over the whole disk. Version 3 images keep the dirty
// bit set while a snapshot operation runs, so their states must open
// (rebuilding refcounts) and then check clean; version 2 images have no
// dirty bit, and their states may show OFLAG_COPIED mismatches
// (docs/engine.md, "Snapshots and crashes").
//
// Reproduce a failure with the line the test prints; the knobs are those
// of TestCrashStates (QCOW2_CRASH_STATES defaults to 100 here).

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/crashsim"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

func TestCrashStatesSnapshotsAndCompression(t *testing.T) {
	var configs []crashConfig
	for _, c := range []struct {
		tag, compat string
		lazy        bool
		cs          int64
		backing     string
		ext         bool
	}{
		{"v3", "1.1", false, 4096, "", false},
		{"v3", "1.1", false, 65536, "raw", false},
		{"v3lazy", "1.1", true, 4096, "qcow2", false},
		{"v3lazy", "1.1", true, 65536, "", false},
		{"v2", "0.10", false, 4096, "raw", false},
		{"v2", "0.10", false, 65536, "", false},
		{"v3extl2", "1.1", false, 65536, "raw", true},
	} {
		name := fmt.Sprintf("snap-%s-c%s", c.tag, sizeTag(c.cs))
		if c.backing != "" {
			name += "-" + c.backing
		}
		size := map[int64]int64{4096: 512 << 10, 65536: 2 << 20}[c.cs]
		configs = append(configs, crashConfig{name: name, compat: c.compat, lazy: c.lazy,
			clusterSize: c.cs, backing: c.backing, size: size, snapshots: true, extendedL2: c.ext})
	}
	runCrashTest(t, "TestCrashStatesSnapshotsAndCompression", configs, 100)
}

// compValue is the byte a compressed write with sequence number seq
// leaves at guest offset b: runs of 64 equal bytes in even 4 KiB blocks
// (compressible), tag's noise in odd ones. A 4 KiB cluster of noise does
// not compress and takes the uncompressed path of WriteCompressedClusters;
// a 64 KiB cluster is half noise and compresses.
func compValue(seq int, b int64) byte {
	if (b>>12)&1 == 0 {
		return tag(seq, b&^63)
	}
	return tag(seq, b)
}

// snapshotWorkload runs nops sequential guest operations, snapshot
// operations and compressed writes on img and returns them with the
// image (reopened, possibly). Snapshots are named after the sequence
// number of their creation, so names are never reused.
func snapshotWorkload(t *testing.T, run *crashRun, img *qcow2.Image, f qcow2.File, r *crashsim.Recorder,
	name string, mark func() int, rng *rand.Rand, nops int) *qcow2.Image {
	t.Helper()
	size, cs := run.cfg.size, run.cfg.clusterSize
	model := slices.Clone(run.initial)
	var ops []guestOp
	var snaps []guestOp // live snapshots: their gSnapCreate operations
	for seq := 1; seq <= nops; seq++ {
		g := guestOp{seq: seq, start: mark()}
		var opErr error
		p := rng.IntN(100)
		switch {
		case p < 30:
			g.kind = gWrite
			if rng.IntN(3) == 0 { // whole clusters
				k := 1 + rng.Int64N(3)
				g.off, g.n = rng.Int64N(size/cs-k)*cs, k*cs
			} else {
				g.n = 1 + rng.Int64N(2*cs)
				g.off = rng.Int64N(size - g.n)
			}
			buf := make([]byte, g.n)
			for i := range buf {
				buf[i] = tag(seq, g.off+int64(i))
			}
			_, opErr = img.WriteAt(buf, g.off)
		case p < 37:
			g.kind = gZero
			g.off, g.n = randRange(rng, size, cs)
			g.unmap = rng.IntN(2) == 0
			opErr = img.WriteZeroes(g.off, g.n, g.unmap)
		case p < 42:
			g.kind = gDiscard
			g.off, g.n = randRange(rng, size, cs)
			g.noop = run.cfg.compat == "0.10" && run.cfg.backing != ""
			opErr = img.Discard(g.off, g.n)
		case p < 56:
			off, n, ok := compressTarget(t, img, rng, size, cs)
			if !ok {
				g.kind = gFlush
				opErr = img.Flush()
				break
			}
			g.kind, g.off, g.n = gCompress, off, n
			var cl []qcow2.CompressedCluster
			for c := off; c < off+n; c += cs {
				data := make([]byte, cs)
				for i := range data {
					data[i] = compValue(seq, c+int64(i))
				}
				cl = append(cl, qcow2.CompressedCluster{Off: c, Data: data})
			}
			if len(cl) == 1 && rng.IntN(2) == 0 {
				opErr = img.WriteCompressed(cl[0].Data, cl[0].Off)
			} else {
				opErr = img.WriteCompressedClusters(cl)
			}
		case p < 78: // snapshot operations
			switch q := rng.IntN(10); {
			case len(snaps) == 0 || q < 4 && len(snaps) < 4:
				g.kind, g.name = gSnapCreate, fmt.Sprintf("s%d", seq)
				g.content = slices.Clone(model)
				_, opErr = img.CreateSnapshot(g.name)
				snaps = append(snaps, g)
			case q < 7:
				i := rng.IntN(len(snaps))
				g.kind, g.name = gSnapDelete, snaps[i].name
				opErr = img.DeleteSnapshot(g.name)
				snaps = slices.Delete(snaps, i, i+1)
			default:
				sn := snaps[rng.IntN(len(snaps))]
				g.kind, g.name, g.content = gSnapApply, sn.name, sn.content
				g.off, g.n = 0, size
				opErr = img.ApplySnapshot(g.name)
			}
		case p < 83:
			g.kind = gReopen
			if opErr = img.Close(); opErr == nil {
				r.Reopen()
				img, opErr = qcow2.OpenFile(f, name, qcow2.Options{})
			}
		default:
			g.kind = gFlush
			opErr = img.Flush()
		}
		g.end = mark()
		if opErr != nil {
			t.Fatalf("guest op %v: %v", g, opErr)
		}
		g.apply(model, &size)
		ops = append(ops, g)
	}
	run.ops = ops
	counts := map[guestKind]int{}
	for _, g := range ops {
		counts[g.kind]++
	}
	t.Logf("%d operations: %d writes, %d compressed writes, %d snapshot creates, %d deletes, %d applies, %d flushes, %d reopens",
		len(ops), counts[gWrite], counts[gCompress], counts[gSnapCreate], counts[gSnapDelete], counts[gSnapApply], counts[gFlush], counts[gReopen])
	// The live snapshots must match the model before any crash.
	for _, sn := range snaps {
		if err := checkSnapshotContent(img, sn, size); err != nil {
			t.Fatalf("live image (no crash involved): %v", err)
		}
	}
	return img
}

// compressTarget picks a run of 1-3 clusters that hold nothing in this
// image (unallocated or zero), which WriteCompressedClusters requires.
func compressTarget(t *testing.T, img *qcow2.Image, rng *rand.Rand, size, cs int64) (int64, int64, bool) {
	for range 8 {
		k := 1 + rng.Int64N(3)
		off, n := rng.Int64N(size/cs-k)*cs, k*cs
		ext, err := img.Map(off, n)
		if err != nil {
			t.Fatalf("Map(%d, %d): %v", off, n, err)
		}
		ok := true
		for _, e := range ext {
			if e.Depth == 0 && e.Data {
				ok = false
			}
		}
		if ok {
			return off, n, true
		}
	}
	return 0, 0, false
}

// checkSnapshotContent reads snapshot sn (its gSnapCreate operation) and
// compares it with the guest content at its creation.
func checkSnapshotContent(img *qcow2.Image, sn guestOp, size int64) error {
	v, err := img.OpenSnapshot(sn.name)
	if err != nil {
		return fmt.Errorf("snapshot %q: %w", sn.name, err)
	}
	if v.Size() != size {
		return fmt.Errorf("snapshot %q: size %d, want %d", sn.name, v.Size(), size)
	}
	got := make([]byte, v.Size())
	if _, err := v.ReadAt(got, 0); err != nil {
		return fmt.Errorf("snapshot %q: %w", sn.name, err)
	}
	if i := firstDiff(got, sn.content[:size]); i >= 0 {
		return fmt.Errorf("(f) snapshot %q (%v) differs from the guest content at its creation at guest offset %d: got %#x want %#x",
			sn.name, sn, i, got[i], sn.content[i])
	}
	return nil
}

// checkSnapshots checks (f) and (g) on crash state s, opened as img.
func (r *crashRun) checkSnapshots(s crashsim.State, img *qcow2.Image) error {
	list, err := img.Snapshots()
	if err != nil {
		return err
	}
	creates := map[string]guestOp{}
	deleteStarted := map[string]bool{}
	for _, g := range r.ops {
		switch {
		case g.kind == gSnapCreate:
			creates[g.name] = g
		case g.kind == gSnapDelete && g.start < s.Crash:
			deleteStarted[g.name] = true
		}
	}
	present := map[string]bool{}
	var errs []error
	for _, si := range list {
		g, ok := creates[si.Name]
		if !ok || g.start >= s.Crash {
			errs = append(errs, fmt.Errorf("%v: (f) snapshot %q exists, but its creation had not started", s, si.Name))
			continue
		}
		present[si.Name] = true
		if err := checkSnapshotContent(img, g, r.cfg.size); err != nil {
			errs = append(errs, fmt.Errorf("%v: %w", s, err))
		}
	}
	for _, g := range r.ops {
		if g.end > s.Durable {
			break
		}
		switch {
		case g.kind == gSnapCreate && !present[g.name] && !deleteStarted[g.name]:
			errs = append(errs, fmt.Errorf("%v: (g) snapshot %q was created durably (%v) and is gone", s, g.name, g))
		case g.kind == gSnapDelete && present[g.name]:
			errs = append(errs, fmt.Errorf("%v: (g) snapshot %q was deleted durably (%v) and exists", s, g.name, g))
		}
	}
	return errors.Join(errs...)
}

// TestSnapshotOpsDirtyBit: without lazy refcounts a version 3 image is
// dirty only while a snapshot operation runs (the Recorder sees the bit
// set and synced before the first refcount change, cleared at the end);
// with lazy refcounts it stays set until Close; version 2 never has one.
func TestSnapshotOpsDirtyBit(t *testing.T) {
	for _, c := range []struct {
		compat string
		lazy   bool
	}{{"1.1", false}, {"1.1", true}, {"0.10", false}} {
		t.Run(fmt.Sprintf("%s-lazy=%v", c.compat, c.lazy), func(t *testing.T) {
			r := crashsim.NewRecorder(nil)
			name := filepath.Join(t.TempDir(), "a.qcow2")
			if err := qcow2.CreateFile(r, name, qcow2.CreateOptions{Size: 1 << 20, Compat: c.compat, LazyRefcounts: c.lazy}); err != nil {
				t.Fatal(err)
			}
			r.Reopen()
			img, err := qcow2.OpenFile(r, name, qcow2.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := img.WriteAt(bytes.Repeat([]byte{7}, 8192), 0); err != nil {
				t.Fatal(err)
			}
			dirty := func() bool { return dirtyBit(r.Bytes()) }
			for i, op := range []func() error{
				func() error { _, err := img.CreateSnapshot("a"); return err },
				func() error { return img.ApplySnapshot("a") },
				func() error { _, err := img.CreateSnapshot("b"); return err },
				func() error { return img.DeleteSnapshot("a") },
			} {
				from := r.Len()
				if err := op(); err != nil {
					t.Fatalf("op %d: %v", i, err)
				}
				if got := dirty(); got != c.lazy {
					t.Errorf("op %d: dirty bit %v after the operation, want %v", i, got, c.lazy)
				}
				if c.compat == "1.1" && !c.lazy {
					// The first write sets the bit, the next op is a sync.
					ops := r.Recording().Ops()[from:]
					if len(ops) < 2 || ops[0].Kind != crashsim.OpWrite || ops[0].Off != 72 || ops[1].Kind != crashsim.OpSync {
						t.Errorf("op %d does not start by setting the dirty bit and syncing: %v", i, ops[:min(2, len(ops))])
					}
				}
			}
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}
			if dirty() {
				t.Error("dirty bit set after Close")
			}
		})
	}
}
