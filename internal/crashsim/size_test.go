package crashsim

import (
	"bytes"
	"testing"
)

// A crash keeps the file size of one moment: an extension that a later
// durable write committed is never undone by an older, smaller extension
// landing "after" it (the reservation code relies on this: it extends the
// file and makes the new size durable with one RWF_DSYNC write at its end).
func TestStatesFileSizeIsOneMoment(t *testing.T) {
	r := NewRecorder(nil)
	mustDo(t, r.Truncate(1<<20))
	mustDo(t, r.WriteAtDurable(fill(1, 512), 1<<20-512))
	mustDo(t, r.Truncate(3<<20))
	mustDo(t, r.WriteAtDurable(fill(2, 512), 3<<20-512))
	_, err := r.WriteAt(fill(3, 4096), 5<<20) // extends, not durable
	mustDo(t, err)
	rec := r.Recording()
	reordered := 0
	for _, st := range rec.States(Plan{Seed: 3, ReorderedPerEpoch: 200, Prefixes: 4}) {
		data := rec.Materialize(st)
		floor := int64(0)
		for i, op := range rec.Ops()[:st.Crash] {
			if op.Durable {
				floor = rec.sizeAfter(0, 0, i+1)
			}
		}
		ceiling := rec.sizeAfter(0, 0, st.Crash)
		if n := int64(len(data)); n < floor || n > ceiling {
			t.Fatalf("%v: size %d outside [%d, %d]:\n%s", st, n, floor, ceiling, rec.Explain(st))
		}
		if st.Kind == Reordered {
			reordered++
		}
	}
	if reordered == 0 {
		t.Fatal("no reordered states drawn")
	}
}

// A shrink that persisted drops the bytes it cut, also from blocks that
// were written before it, even when the file grows again afterwards.
func TestStatesShrinkDropsOldBytes(t *testing.T) {
	r := NewRecorder(fill(0xAA, 4096))
	_, err := r.WriteAt(fill(0xBB, 1024), 2048)
	mustDo(t, err)
	mustDo(t, r.Truncate(1024))
	mustDo(t, r.Truncate(4096))
	_, err = r.WriteAt([]byte{1}, 0)
	mustDo(t, err)
	rec := r.Recording()
	grown := 0
	for _, st := range rec.States(Plan{Seed: 5, ReorderedPerEpoch: 200, Prefixes: 4}) {
		data := rec.Materialize(st)
		if st.Kind != Reordered {
			continue
		}
		// Every size point after both truncates must read zeros past 1024;
		// before them the old bytes (0xAA, or 0xBB where written) remain.
		_, _, sizeAt := rec.materialize(st)
		if sizeAt >= 3 && len(data) == 4096 {
			grown++
			if !bytes.Equal(data[1024:], make([]byte, 3072)) {
				t.Fatalf("%v: bytes cut by a persisted shrink came back:\n%s", st, rec.Explain(st))
			}
		}
	}
	if grown == 0 {
		t.Fatal("no reordered state kept both truncates")
	}
}

func mustDo(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
