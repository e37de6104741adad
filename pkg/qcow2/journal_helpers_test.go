package qcow2_test

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/crashsim"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// overlayOn writes base as base.raw in a new directory and creates
// top.qcow2 over it (raw backing) with the other options of create; it
// returns the directory and the overlay's path.
func overlayOn(t *testing.T, base []byte, create qcow2.CreateOptions) (dir, path string) {
	t.Helper()
	dir = t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "base.raw"), base, 0o644); err != nil {
		t.Fatal(err)
	}
	path = filepath.Join(dir, "top.qcow2")
	create.BackingFile, create.BackingFormat = "base.raw", "raw"
	if err := qcow2.Create(path, create); err != nil {
		t.Fatal(err)
	}
	return dir, path
}

// recordedOverlay is an overlay on a raw base written through crashsim
// Recorders on one clock, the image's and its journal's, opened with the
// journal as bootA.
type recordedOverlay struct {
	dir      string
	img      *qcow2.Image
	rec, jr  *crashsim.Recorder
	fromImg  int
	fromJrnl int
}

func recordOverlay(t *testing.T, base []byte, create qcow2.CreateOptions) *recordedOverlay {
	t.Helper()
	o := &recordedOverlay{dir: t.TempDir()}
	if err := os.WriteFile(filepath.Join(o.dir, "base.raw"), base, 0o444); err != nil {
		t.Fatal(err)
	}
	clock := &crashsim.Clock{}
	o.rec, o.jr = crashsim.NewRecorderOn(clock, nil), crashsim.NewRecorderOn(clock, nil)
	name := filepath.Join(o.dir, "top.qcow2")
	create.BackingFile, create.BackingFormat = "base.raw", "raw"
	if err := qcow2.CreateFile(o.rec, name, create); err != nil {
		t.Fatal(err)
	}
	o.rec.Reopen()
	o.fromImg, o.fromJrnl = o.rec.Len(), o.jr.Len()
	img, err := qcow2.OpenFile(o.rec, name, qcow2.WithJournal(qcow2.Options{}, o.jr, bootA))
	if err != nil {
		t.Fatal(err)
	}
	o.img = img
	return o
}

// recordings returns what was recorded since the open: the image's and
// the journal's streams.
func (o *recordedOverlay) recordings() []*crashsim.Recording {
	return []*crashsim.Recording{o.rec.Recording().Since(o.fromImg), o.jr.Recording().Since(o.fromJrnl)}
}

// materialize writes crash state s of recs as an image beside the base
// (name), with its journal, and returns the image's path.
func (o *recordedOverlay) materialize(t *testing.T, recs []*crashsim.Recording, s crashsim.GroupState, name string) string {
	t.Helper()
	path := filepath.Join(o.dir, name)
	if err := os.WriteFile(path, recs[0].Materialize(s.Files[0]), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(qcow2.JournalPath(path), recs[1].Materialize(s.Files[1]), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// copyKilled copies base.raw, top.qcow2 and its journal from dir, as a
// kill -9 of the process writing them leaves them (the files as the
// kernel has them), to a new directory and returns the copy of top.qcow2.
func copyKilled(t *testing.T, dir string) string {
	t.Helper()
	to := t.TempDir()
	for _, name := range []string{"base.raw", "top.qcow2", "top.qcow2.journal"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(to, "top.qcow2")
}

// unflushedThenKill makes count writes of random data, each where pick
// says, with nothing flushed; copies the files as a kill leaves them
// (copyKilled); closes img; and requires the closed image in dir and the
// kill copy, opened with opts (the boot decides the replay), to read want
// with those writes and check clean.
func unflushedThenKill(t *testing.T, img *qcow2.Image, dir string, want []byte, opts qcow2.Options, count int, pick func(*rand.Rand) (off, n int64)) {
	t.Helper()
	rng := rand.New(rand.NewPCG(10, 10))
	for range count {
		off, n := pick(rng)
		buf := make([]byte, n)
		fillRandom(rng, buf)
		if _, err := img.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
		copy(want[off:], buf)
	}
	killed := copyKilled(t, dir)
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	requireReadsAndChecks(t, want, opts, filepath.Join(dir, "top.qcow2"), killed)
}

// requireReadsAndChecks opens each image with opts: it must read want
// and check without corruption.
func requireReadsAndChecks(t *testing.T, want []byte, opts qcow2.Options, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if got := readAll(t, p, opts); !bytes.Equal(got, want) {
			t.Fatalf("%s: differs at %d", p, firstDiff(got, want))
		}
		res, err := qcow2.Check(p, qcow2.CheckOptions{})
		if err != nil || res.Corruptions != 0 || res.CheckErrors != 0 {
			t.Fatalf("%s: check: %+v %v", p, res, err)
		}
	}
}
