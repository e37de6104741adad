package qcow2

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// An unsafe rebase rewrites only the backing file name and format: table
// offsets, feature bits and unknown header extensions stay as they were.
func TestRebaseUnsafeKeepsHeader(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "a.qcow2")
	if err := Create(p, CreateOptions{Size: 1 << 20, LazyRefcounts: true}); err != nil {
		t.Fatal(err)
	}
	fh, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	h, err := readHeader(NewOSFile(fh))
	if err != nil {
		t.Fatal(err)
	}
	h.unknownExts = append(h.unknownExts, headerExt{typ: 0x12345678, data: []byte("keep me")})
	buf, err := h.encode()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fh.WriteAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	fh.Close()
	before := readHeaderFile(t, p)

	if err := Rebase(p, "some/base.raw", "raw", true, BackingPolicy{}); err != nil {
		t.Fatal(err)
	}
	after := readHeaderFile(t, p)
	if after.BackingFile != "some/base.raw" || after.BackingFormat != "raw" {
		t.Errorf("backing %q (%q)", after.BackingFile, after.BackingFormat)
	}
	after.BackingFile, after.BackingFormat = before.BackingFile, before.BackingFormat
	after.BackingFileOffset, after.BackingFileSize = before.BackingFileOffset, before.BackingFileSize
	if !reflect.DeepEqual(before, after) {
		t.Errorf("header changed:\n%+v\nwas\n%+v", after, before)
	}

	if err := Rebase(p, "", "", true, BackingPolicy{}); err != nil {
		t.Fatal(err)
	}
	if h := readHeaderFile(t, p); h.BackingFile != "" || h.BackingFormat != "" || h.BackingFileOffset != 0 {
		t.Errorf("backing file left after removal: %+v", h)
	}
}

func readHeaderFile(t *testing.T, p string) *Header {
	t.Helper()
	fh, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	h, err := readHeader(NewOSFile(fh))
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// A safe rebase opens the new backing file under the caller's policy and
// changes nothing when the policy refuses it; so does commit.
func TestRebaseCommitPolicy(t *testing.T) {
	dir := t.TempDir()
	outside := filepath.Join(t.TempDir(), "base.qcow2")
	if err := Create(outside, CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "a.qcow2")
	if err := Create(p, CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if err := Rebase(p, outside, "qcow2", false, BackingPolicy{}); !errors.Is(err, ErrPolicy) {
		t.Fatalf("rebase onto a file outside the root: %v", err)
	}
	if h := readHeaderFile(t, p); h.BackingFile != "" {
		t.Fatalf("refused rebase stored %q", h.BackingFile)
	}
	if err := Rebase(p, outside, "qcow2", true, BackingPolicy{}); err != nil {
		t.Fatal(err) // unsafe: the name is stored, nothing is opened
	}
	if err := Commit(p, BackingPolicy{}, false); !errors.Is(err, ErrPolicy) {
		t.Fatalf("commit into a file outside the root: %v", err)
	}
	if err := Commit(p, BackingPolicy{AllowAnyPath: true}, false); err != nil {
		t.Fatalf("commit with a wide policy: %v", err)
	}
}

func TestAmendLazyRefcountsEngine(t *testing.T) {
	p := filepath.Join(t.TempDir(), "a.qcow2")
	if err := Create(p, CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	for _, on := range []bool{true, false} {
		if err := Amend(p, &on); err != nil {
			t.Fatal(err)
		}
		if got := readHeaderFile(t, p).CompatibleFeatures&compatLazyRefcounts != 0; got != on {
			t.Errorf("lazy refcounts %v, want %v", got, on)
		}
	}
	p2 := filepath.Join(t.TempDir(), "v2.qcow2")
	if err := Create(p2, CreateOptions{Size: 1 << 20, Compat: "0.10"}); err != nil {
		t.Fatal(err)
	}
	on := true
	if err := Amend(p2, &on); !errors.Is(err, ErrUnsupported) {
		t.Errorf("lazy refcounts on a v2 image: %v", err)
	}
}
