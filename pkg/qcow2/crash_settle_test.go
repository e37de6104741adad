package qcow2

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/crashsim"
)

// settleFrees applies deferred frees between flushes. A crash at any
// point of a stream of discards (enough to settle several times) followed
// by writes that reuse the freed clusters, with no guest flush, must still
// check clean and show every guest cluster its own data or zeros: if the
// frees were applied before the discards' L2 writes were durable, a
// cluster would have a refcount of 0 while still referenced, or two
// owners once reused.
func TestCrashSettledFreesNeverTwoOwners(t *testing.T) {
	const (
		cs       = 64 << 10
		size     = 4 << 20 // 64 guest clusters; a 16-cluster batch
		written  = 40
		discards = 30
	)
	fill := func(vi int64, v byte) []byte { return bytes.Repeat([]byte{v}, cs) }
	oldVal := func(vi int64) byte { return byte(1 + vi) }
	newVal := func(vi int64) byte { return byte(100 + vi) }

	img, r, dir := recordedImage(t, cs, size, nil)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	for vi := int64(0); vi < written; vi++ {
		_, err := img.WriteAt(fill(vi, oldVal(vi)), vi*cs)
		must(err)
	}
	must(img.Flush())
	from := r.Len() // crashes from here on: what came before is durable
	for vi := int64(0); vi < discards; vi++ {
		must(img.Discard(vi*cs, cs))
	}
	if n := int64(len(img.alloc.pending)); n >= discards {
		t.Fatalf("%d frees still deferred after %d discards: settleFrees never ran", n, discards)
	}
	for vi := int64(written); vi < size/cs; vi++ {
		_, err := img.WriteAt(fill(vi, newVal(vi)), vi*cs)
		must(err)
	}

	rec := r.Recording().Since(from)
	states := rec.States(crashsim.Plan{Seed: 7, ReorderedPerEpoch: 25, Prefixes: 12})
	buf := make([]byte, cs)
	checkStatesClean(t, rec, states, dir, func(s crashsim.State, path string) {
		ro, err := Open(path, Options{ReadOnly: true})
		if err != nil {
			t.Fatalf("%v: open: %v", s, err)
		}
		for vi := int64(0); vi < size/cs; vi++ {
			if _, err := ro.ReadAt(buf, vi*cs); err != nil {
				t.Fatalf("%v: read cluster %d: %v", s, vi, err)
			}
			want := []byte{0}
			switch {
			case vi < discards:
				want = append(want, oldVal(vi))
			case vi < written:
				want = []byte{oldVal(vi)} // flushed, never touched again
			default:
				want = append(want, newVal(vi))
			}
			// A punch may be torn: zeros and old data may mix.
			for i, b := range buf {
				if bytes.IndexByte(want, b) < 0 {
					t.Fatalf("%v: cluster %d byte %d reads %#x, want one of %x", s, vi, i, b, want)
				}
			}
		}
		ro.Close()
	})
}

// A Flush that found mappings in the write journal calls flushJournaled,
// which takes the lock after other operations may have run: one of them
// may have checkpointed the journal (so flushJournaled's own checkpoint
// syncs nothing) and then unlinked clusters with an L2 write that is not
// durable yet. The frees must still wait for a sync: every crash state of
// flushJournaled then checks clean. (Found by TestCrashStatesJournal's
// concurrent configuration under load, in the checks of issue 17.)
func TestCrashFlushAfterRacedCheckpointSyncsBeforeFrees(t *testing.T) {
	const cs, size, clusters = 64 << 10, 2 << 20, 8
	img, r, dir := recordedImage(t, cs, size, nil)
	defer img.Close()
	for vi := int64(0); vi < clusters; vi++ {
		if _, err := img.WriteAt(bytes.Repeat([]byte{byte(1 + vi)}, cs), vi*cs); err != nil {
			t.Fatal(err)
		}
	}
	if err := img.Flush(); err != nil {
		t.Fatal(err)
	}
	from := r.Len()
	// The unlinks: L2 writes and frees, nothing synced.
	if err := img.Discard(0, clusters*cs); err != nil {
		t.Fatal(err)
	}
	if len(img.alloc.pending) == 0 {
		t.Fatal("the discard deferred no frees: the test tests nothing")
	}
	// Flush saw journal entries, and a checkpoint ran meanwhile.
	if err := img.flushJournaled(); err != nil {
		t.Fatal(err)
	}
	rec := r.Recording().Since(from)
	checkStatesClean(t, rec, rec.States(crashsim.Plan{Seed: 3, ReorderedPerEpoch: 200, Prefixes: 20}), dir, nil)
}

// recordedImage creates an image of size bytes with cs clusters on a
// crashsim Recorder, in a new directory, and opens it; wrap, if not nil,
// stands between the engine and the Recorder.
func recordedImage(t *testing.T, cs, size int64, wrap func(*crashsim.Recorder) File) (*Image, *crashsim.Recorder, string) {
	t.Helper()
	dir := t.TempDir()
	name := filepath.Join(dir, "t.qcow2")
	r := crashsim.NewRecorder(nil)
	if err := CreateFile(r, name, CreateOptions{Size: size, ClusterSize: cs}); err != nil {
		t.Fatal(err)
	}
	r.Reopen()
	var f File = r
	if wrap != nil {
		f = wrap(r)
	}
	img, err := OpenFile(f, name, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return img, r, dir
}

// checkStatesClean materializes each crash state of rec in dir and
// requires Check to find no corruption; more, if not nil, checks each
// state further.
func checkStatesClean(t *testing.T, rec *crashsim.Recording, states []crashsim.State, dir string, more func(s crashsim.State, path string)) {
	t.Helper()
	path := filepath.Join(dir, "state.qcow2")
	for _, s := range states {
		if err := os.WriteFile(path, rec.Materialize(s), 0o644); err != nil {
			t.Fatal(err)
		}
		res, err := Check(path, CheckOptions{})
		if err != nil {
			t.Fatalf("%v: check: %v", s, err)
		}
		if res.Corruptions != 0 || res.CheckErrors != 0 {
			t.Fatalf("%v: %d corruptions, %d check errors:\n%s\n%s", s, res.Corruptions, res.CheckErrors,
				strings.Join(res.Messages, "\n"), rec.Explain(s))
		}
		if more != nil {
			more(s, path)
		}
	}
	t.Logf("%d crash states check clean", len(states))
}
