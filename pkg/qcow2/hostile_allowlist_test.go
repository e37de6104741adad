package qcow2

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// allowlistStore lays out what a node's store holds: a golden image (the
// one file a volume may name), another volume with its write journal, a
// volume whose journal is still empty, and links to both kinds of file.
// It returns the store directory.
func allowlistStore(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	in := func(name string) string { return filepath.Join(dir, name) }
	for _, name := range []string{"golden.qcow2", "other.qcow2", "fresh.qcow2"} {
		if err := Create(in(name), CreateOptions{Size: 1 << 20}); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(in("other.qcow2.journal"), encodeJournalHeader(1, [16]byte{}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(in("fresh.qcow2.journal"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, l := range [][2]string{{"golden.qcow2", "hard-golden.qcow2"}, {"other.qcow2", "hard-other.qcow2"}} {
		if err := os.Link(in(l[0]), in(l[1])); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range [][2]string{{"golden.qcow2", "sym-golden.qcow2"}, {"other.qcow2", "sym-other.qcow2"}, {"..", "up"}} {
		if err := os.Symlink(l[0], in(l[1])); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// exactVolume creates dir/vol.qcow2 naming backing, and returns its path
// and an Exact policy listing the files given (relative to dir).
func exactVolume(t *testing.T, dir, backing string, listed ...string) (string, BackingPolicy) {
	t.Helper()
	vol := filepath.Join(dir, "vol.qcow2")
	os.Remove(vol)
	if err := Create(vol, CreateOptions{Size: 1 << 20, BackingFile: backing, BackingFormat: "qcow2", Unsafe: true}); err != nil {
		t.Fatal(err)
	}
	pol := BackingPolicy{Exact: true}
	for _, f := range listed {
		pol.Files = append(pol.Files, filepath.Join(dir, f))
	}
	return vol, pol
}

// TestHostileBackingOutsideAllowlist: under an Exact policy a volume opens
// the golden image the caller lists, by any name that leads to that file,
// and nothing else: not another volume (by its name, a symlink, a hard
// link or a path through ".."), not a journal even when listed, not
// itself. Each refusal comes before the named file is read.
func TestHostileBackingOutsideAllowlist(t *testing.T) {
	dir := allowlistStore(t)
	refused := []struct {
		name, backing string
		listed        []string
		class         error
		says          string
	}{
		{"another volume", "other.qcow2", nil, ErrPolicy, "not one of the 1 files"},
		{"another volume by absolute path", filepath.Join(dir, "other.qcow2"), nil, ErrPolicy, "not one of"},
		{"another volume through ..", "up/" + filepath.Base(dir) + "/other.qcow2", nil, ErrPolicy, "not one of"},
		{"a symlink to another volume", "sym-other.qcow2", nil, ErrPolicy, "not one of"},
		{"a hard link to another volume", "hard-other.qcow2", nil, ErrPolicy, "not one of"},
		{"a file outside the store", "/etc/passwd", nil, ErrPolicy, "not one of"},
		{"a missing file", "nope.qcow2", nil, ErrPolicy, "no such file"},
		{"a journal, listed", "other.qcow2.journal", []string{"other.qcow2.journal"}, ErrPolicy, "is a write journal"},
		{"an empty journal, listed", "fresh.qcow2.journal", []string{"fresh.qcow2", "fresh.qcow2.journal"}, ErrPolicy, "is the write journal of"},
		{"itself, listed", "vol.qcow2", []string{"vol.qcow2"}, ErrInvalid, "backing loop"},
	}
	for _, c := range refused {
		t.Run(c.name, func(t *testing.T) {
			vol, pol := exactVolume(t, dir, c.backing, append([]string{"golden.qcow2"}, c.listed...)...)
			wantRefused(t, tryOpen(vol, Options{ReadOnly: true, Backing: pol}), c.class, 1<<20, c.says)
			wantUnchangedAfterWritableOpen(t, vol, Options{Backing: pol}, c.class)
		})
	}
	allowed := []string{"golden.qcow2", filepath.Join(dir, "golden.qcow2"), "sym-golden.qcow2", "hard-golden.qcow2",
		"up/" + filepath.Base(dir) + "/golden.qcow2"}
	for _, backing := range allowed {
		t.Run("allowed "+backing, func(t *testing.T) {
			vol, pol := exactVolume(t, dir, backing, "golden.qcow2")
			img, err := Open(vol, Options{Backing: pol})
			if err != nil {
				t.Fatal(err)
			}
			img.Close()
		})
	}
	t.Run("a listed layer over an unlisted one", func(t *testing.T) {
		mid := filepath.Join(dir, "mid.qcow2")
		if err := Create(mid, CreateOptions{Size: 1 << 20, BackingFile: "other.qcow2", BackingFormat: "qcow2", Unsafe: true}); err != nil {
			t.Fatal(err)
		}
		vol, pol := exactVolume(t, dir, "mid.qcow2", "mid.qcow2", "golden.qcow2")
		wantRefused(t, tryOpen(vol, Options{ReadOnly: true, Backing: pol}), ErrPolicy, 1<<20, "other.qcow2 is not one of the 2 files")
	})
}

// TestStandalonePolicy: an imported image may name no file at all.
func TestStandalonePolicy(t *testing.T) {
	dir := allowlistStore(t)
	pol := BackingPolicy{Standalone: true}
	img, err := Open(filepath.Join(dir, "golden.qcow2"), Options{Backing: pol})
	if err != nil {
		t.Fatalf("a standalone image: %v", err)
	}
	img.Close()

	vol, _ := exactVolume(t, dir, "golden.qcow2")
	for _, noBacking := range []bool{false, true} {
		wantRefused(t, tryOpen(vol, Options{ReadOnly: true, NoBacking: noBacking, Backing: pol}), ErrPolicy, 1<<20, "must stand alone")
	}
	wantUnchangedAfterWritableOpen(t, vol, Options{Backing: pol}, ErrPolicy)

	data := filepath.Join(dir, "data.qcow2")
	if err := Create(data, CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(data)
	if err != nil {
		t.Fatal(err)
	}
	h, err := parseHeader(raw[:1<<16])
	if err != nil {
		t.Fatal(err)
	}
	h.IncompatibleFeatures |= incompatDataFile
	h.DataFile = "golden.qcow2"
	buf, err := h.encode()
	if err != nil {
		t.Fatal(err)
	}
	patchFile(t, data, 0, buf)
	wantRefused(t, tryOpen(data, Options{ReadOnly: true, Backing: pol}), ErrPolicy, 1<<20, "external data file")
}

// TestBackingPolicyContradictions: a policy that says two things is
// refused, whatever the image.
func TestBackingPolicyContradictions(t *testing.T) {
	p := newTestImage(t, CreateOptions{})
	for _, pol := range []BackingPolicy{
		{Standalone: true, AllowAnyPath: true},
		{Standalone: true, AllowDataFile: true},
		{Standalone: true, Exact: true},
		{Standalone: true, Root: "/"},
		{Exact: true, AllowAnyPath: true},
		{Exact: true, Root: "/"},
		{Files: []string{p}},
	} {
		if _, err := Open(p, Options{ReadOnly: true, Backing: pol}); !errors.Is(err, ErrPolicy) {
			t.Errorf("%+v: %v, want ErrPolicy", pol, err)
		}
	}
}

// TestFreezeUnderExactPolicy: a live freeze lists the frozen layer for the
// new overlay; reopening the volume needs the caller to list it too. A
// standalone volume cannot be frozen (it would get a backing file).
func TestFreezeUnderExactPolicy(t *testing.T) {
	dir := allowlistStore(t)
	vol, pol := exactVolume(t, dir, "golden.qcow2", "golden.qcow2")
	l, err := OpenLive(vol, Options{Backing: pol})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.WriteAt([]byte("before"), 0); err != nil {
		t.Fatal(err)
	}
	snap := filepath.Join(dir, "snap1.qcow2")
	if err := l.Freeze(snap); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(vol, Options{ReadOnly: true, Backing: pol}); !errors.Is(err, ErrPolicy) {
		t.Fatalf("reopened without the frozen layer listed: %v", err)
	}
	pol.Files = append(pol.Files, snap)
	img, err := Open(vol, Options{ReadOnly: true, Backing: pol})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 6)
	if _, err := img.ReadAt(buf, 0); err != nil || string(buf) != "before" {
		t.Fatalf("read %q, %v", buf, err)
	}
	img.Close()

	alone := filepath.Join(dir, "alone.qcow2")
	if err := Create(alone, CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	l, err = OpenLive(alone, Options{Backing: BackingPolicy{Standalone: true}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.Freeze(filepath.Join(dir, "snap2.qcow2")); !errors.Is(err, ErrPolicy) {
		t.Fatalf("freeze of a standalone volume: %v", err)
	}
}
