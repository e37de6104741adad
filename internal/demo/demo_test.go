package demo

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
)

func needDemoTools(t *testing.T) {
	testtools.NeedRoot(t)
	testtools.Need(t, "mkfs.ext4", "mount", "umount", "blkid")
	if _, err := os.Stat("/dev/fuse"); err != nil {
		if testtools.InCI() {
			t.Fatal("/dev/fuse is missing")
		}
		t.Skip("/dev/fuse is missing")
	}
}

// The demo runs every step, the restores and the clone read what their
// sources held (the demo fails otherwise), and nothing it made is left.
func TestDemo(t *testing.T) {
	needDemoTools(t)
	dir := t.TempDir()
	var out bytes.Buffer
	if err := Run(context.Background(), Options{Out: &out, Dir: dir, Version: "test"}); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, want := range []string{"stage + publish vol-block (raw block)", "restore the internal snapshot",
		"clone vol-block", "expand vol-block online", "files in its chain", "left behind: nothing"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the report lacks %q:\n%s", want, out.String())
		}
	}
	requireNothingLeft(t, dir)
}

// Interrupted after any of these steps (Ctrl-C), the demo still takes
// down and removes everything it made.
func TestDemoInterrupted(t *testing.T) {
	needDemoTools(t)
	for _, at := range []string{"golden image", "stage + publish vol-block (raw block)", "CreateSnapshot (internal) of vol-fs", "clone vol-block"} {
		t.Run(at, func(t *testing.T) {
			dir := t.TempDir()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var out bytes.Buffer
			err := Run(ctx, Options{Out: &out, Dir: dir, AfterStep: func(name string) {
				if name == at {
					cancel()
				}
			}})
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("interrupted demo: %v, want context.Canceled\n%s", err, out.String())
			}
			if !strings.Contains(out.String(), "left behind: nothing") {
				t.Errorf("the report does not say nothing was left:\n%s", out.String())
			}
			requireNothingLeft(t, dir)
		})
	}
}

// requireNothingLeft fails if a mount, a loop binding or a file of the
// demo remains under dir.
func requireNothingLeft(t *testing.T, dir string) {
	t.Helper()
	if left := sweep(dir); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		t.Errorf("left behind: %s", e.Name())
	}
}
