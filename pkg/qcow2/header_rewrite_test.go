package qcow2

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// With 512-byte clusters there may be no room for the new backing file
// name beside the live header and the old name: the rewrite is refused
// and the file is left byte for byte as it was (a rewrite in place could
// tear). An unchanged name stays where it is, and a name that fits is
// accepted.
func TestRebaseRefusedWithoutRoomChangesNothing(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "a.qcow2")
	old := strings.Repeat("o", 296) + ".raw"
	if err := Create(p, CreateOptions{Size: 1 << 20, ClusterSize: 512, BackingFile: old, BackingFormat: "raw", Unsafe: true}); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	err = Rebase(p, strings.Repeat("n", 200)+".raw", "raw", true, BackingPolicy{})
	if !errors.Is(err, ErrUnsupported) {
		t.Fatalf("rebase to a name with no room: %v, want ErrUnsupported", err)
	}
	after, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Fatal("refused rebase changed the file")
	}
	if err := Rebase(p, old, "qcow2", true, BackingPolicy{}); err != nil {
		t.Fatalf("format change keeping the name: %v", err)
	}
	if h := readHeaderFile(t, p); h.BackingFile != old || h.BackingFormat != "qcow2" {
		t.Fatalf("backing file %q (%q) after the format change", h.BackingFile, h.BackingFormat)
	}
	if err := Rebase(p, "short.raw", "raw", true, BackingPolicy{}); err != nil {
		t.Fatal(err)
	}
	if h := readHeaderFile(t, p); h.BackingFile != "short.raw" {
		t.Fatalf("backing file %q after rebase", h.BackingFile)
	}
}
