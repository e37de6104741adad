package qcow2_test

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// A Freeze of a volume written with a journal gives the new top the
// journal too: copy-on-write from the frozen layer goes on without a sync
// per first write, and a kill leaves a top whose journal replays.
func TestFreezeKeepsTheJournal(t *testing.T) {
	base := bytes.Repeat([]byte{0x33}, 1<<20)
	dir, path := overlayOn(t, base, qcow2.CreateOptions{})
	opts := qcow2.WithBoot(qcow2.Options{Journal: true}, bootA)
	l, err := qcow2.OpenLive(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	want := slices.Clone(base)
	write := func(b byte, off int64) {
		p := bytes.Repeat([]byte{b}, 4096)
		if _, err := l.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
		copy(want[off:], p)
	}
	write(1, 0)
	if err := l.Freeze(filepath.Join(dir, "snap.qcow2")); err != nil {
		t.Fatal(err)
	}
	if journalHoldsRecords(t, path) {
		t.Fatal("the new top's journal holds records before any write")
	}
	write(2, 0)      // copy-on-write from the frozen layer
	write(3, 200000) // and from the base
	if !journalHoldsRecords(t, path) {
		t.Fatal("the new top's copy-on-write mappings are not journaled")
	}
	killed := t.TempDir()
	for _, name := range []string{"base.raw", "snap.qcow2", "top.qcow2", "top.qcow2.journal"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(killed, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	requireReadsAndChecks(t, want, qcow2.WithBoot(qcow2.Options{}, bootA), path, filepath.Join(killed, "top.qcow2"))
}
