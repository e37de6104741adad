package qcow2

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// chainDir makes dir/base.raw (filled with 0xAB) and returns dir.
func chainDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "base.raw"), bytes.Repeat([]byte{0xAB}, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestBackingInsideRootReadsThrough(t *testing.T) {
	dir := chainDir(t)
	top := filepath.Join(dir, "top.qcow2")
	if err := Create(top, CreateOptions{BackingFile: "base.raw", BackingFormat: "raw"}); err != nil {
		t.Fatal(err)
	}
	img, err := Open(top, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if img.Size() != 1<<20 {
		t.Fatalf("size %d taken from backing", img.Size())
	}
	buf := make([]byte, 4096)
	if _, err := img.ReadAt(buf, 12345); err != nil || buf[0] != 0xAB || buf[4095] != 0xAB {
		t.Fatalf("read through backing: %v %x", err, buf[:4])
	}
}

func TestBackingPolicyRefusals(t *testing.T) {
	outside := chainDir(t)
	cases := map[string]string{
		"absolute outside": filepath.Join(outside, "base.raw"),
		"dot-dot":          "../" + filepath.Base(outside) + "/base.raw",
		"json":             `json:{"driver":"raw","file":{"driver":"file","filename":"/etc/passwd"}}`,
		"protocol":         "nbd://10.0.0.1/x",
		"escaping symlink": "link.raw",
		"symlinked dir":    "linkdir/base.raw",
		"missing":          "nope.raw",
		"absolute /etc":    "/etc/passwd",
	}
	for name, backing := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			os.Symlink(filepath.Join(outside, "base.raw"), filepath.Join(dir, "link.raw"))
			os.Symlink(outside, filepath.Join(dir, "linkdir"))
			top := filepath.Join(dir, "top.qcow2")
			// Create with a wide policy, as an operator could, then open
			// with the default (confined) one.
			err := Create(top, CreateOptions{Size: 1 << 20, BackingFile: backing, BackingFormat: "raw", Backing: BackingPolicy{AllowAnyPath: true}})
			if err != nil {
				// The wide policy could not open it either (json:, missing):
				// write the header by hand so open is what is tested.
				if err := Create(top, CreateOptions{Size: 1 << 20}); err != nil {
					t.Fatal(err)
				}
				setBackingName(t, top, backing, "raw")
			}
			img, err := Open(top, Options{})
			if err == nil {
				img.Close()
				t.Fatalf("backing %q was opened under the default policy", backing)
			}
			if !errors.Is(err, ErrPolicy) && !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("want a policy error, got %v", err)
			}
			img, err = Open(top, Options{NoBacking: true})
			if err != nil {
				t.Fatalf("NoBacking open: %v", err)
			}
			img.Close()
		})
	}
}

// setBackingName rewrites the header of path with a new backing name.
func setBackingName(t *testing.T, path, name, format string) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	h, err := parseHeader(raw[:1<<16])
	if err != nil {
		t.Fatal(err)
	}
	h.BackingFile, h.BackingFormat = name, format
	buf, err := h.encode()
	if err != nil {
		t.Fatal(err)
	}
	patchFile(t, path, 0, buf)
}

func TestBackingChainDepthLimit(t *testing.T) {
	dir := t.TempDir()
	if err := Create(filepath.Join(dir, "l0.qcow2"), CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	// A loop: l0 names itself. The loop check stops it at once
	// (hostile_loop_test.go has more); distinct layers meet the depth
	// limit (TestHostileDeepChain).
	setBackingName(t, filepath.Join(dir, "l0.qcow2"), "l0.qcow2", "qcow2")
	_, err := Open(filepath.Join(dir, "l0.qcow2"), Options{ReadOnly: true})
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("self-referencing chain: %v", err)
	}
}

// TestBackingFIFORefused: a backing file name inside the root that is a
// FIFO is refused at once (opening it for reading would wait for a
// writer forever); so is a directory.
func TestBackingFIFORefused(t *testing.T) {
	dir := t.TempDir()
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o600); err != nil {
		t.Skip("no FIFOs here:", err)
	}
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"fifo", "sub"} {
		top := filepath.Join(dir, name+".qcow2")
		if err := Create(top, CreateOptions{Size: 1 << 20, BackingFile: name, BackingFormat: "raw", Unsafe: true}); err != nil {
			t.Fatal(err)
		}
		if _, err := Open(top, Options{ReadOnly: true}); !errors.Is(err, ErrPolicy) {
			t.Errorf("%s as a backing file: %v, want ErrPolicy", name, err)
		}
	}
}
