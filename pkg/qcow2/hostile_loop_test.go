package qcow2

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// TestHostileBackingLoops: a chain that comes back to one of its own files,
// under its own name or another, is refused at the first repeat, by device
// and inode, with an error that says so; not after opening 64 layers.
func TestHostileBackingLoops(t *testing.T) {
	cases := []struct {
		name string
		make func(t *testing.T, dir string) // makes dir/a.qcow2
	}{
		{"A names A", func(t *testing.T, dir string) {
			loopImage(t, dir, "a.qcow2", "a.qcow2")
		}},
		{"A names B names A", func(t *testing.T, dir string) {
			loopImage(t, dir, "a.qcow2", "b.qcow2")
			loopImage(t, dir, "b.qcow2", "a.qcow2")
		}},
		{"A names a hard link to A", func(t *testing.T, dir string) {
			loopImage(t, dir, "a.qcow2", "second-name.qcow2")
			if err := os.Link(filepath.Join(dir, "a.qcow2"), filepath.Join(dir, "second-name.qcow2")); err != nil {
				t.Fatal(err)
			}
		}},
		{"A names B names a symlink to A", func(t *testing.T, dir string) {
			loopImage(t, dir, "a.qcow2", "b.qcow2")
			loopImage(t, dir, "b.qcow2", "link.qcow2")
			if err := os.Symlink("a.qcow2", filepath.Join(dir, "link.qcow2")); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			c.make(t, dir)
			a := filepath.Join(dir, "a.qcow2")
			wantRefused(t, tryOpen(a, Options{ReadOnly: true}), ErrInvalid, 1<<20, "backing loop")
			wantRefused(t, tryOpen(a, Options{ReadOnly: true, Backing: BackingPolicy{AllowAnyPath: true}}), ErrInvalid, 1<<20, "backing loop")
			wantUnchangedAfterWritableOpen(t, a, Options{}, ErrInvalid)
		})
	}
}

// loopImage creates dir/name naming backing as its qcow2 backing file,
// without opening it (it may not exist yet).
func loopImage(t *testing.T, dir, name, backing string) {
	t.Helper()
	err := Create(filepath.Join(dir, name), CreateOptions{Size: 1 << 20, BackingFile: backing, BackingFormat: "qcow2", Unsafe: true})
	if err != nil {
		t.Fatal(err)
	}
}

// TestHostileDeepChain: 70 distinct layers meet the depth limit. The open
// reads only their headers on the way down: no layer's tables are loaded
// before the chain below it has opened.
func TestHostileDeepChain(t *testing.T) {
	dir := t.TempDir()
	const n = 70
	for i := range n {
		name := fmt.Sprintf("d%d.qcow2", i)
		if i == n-1 {
			if err := Create(filepath.Join(dir, name), CreateOptions{Size: 1 << 20}); err != nil {
				t.Fatal(err)
			}
			continue
		}
		loopImage(t, dir, name, fmt.Sprintf("d%d.qcow2", i+1))
	}
	top := filepath.Join(dir, "d0.qcow2")
	wantRefused(t, tryOpen(top, Options{ReadOnly: true}), ErrInvalid, 8<<20, "backing chain deeper than 64")
	wantUnchangedAfterWritableOpen(t, top, Options{}, ErrInvalid)
}
