package golden

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestCollect: Collect removes the scratch files interrupted imports left
// in TmpDir, and nothing else: not other files, not directories, not the
// files of an import running now.
func TestCollect(t *testing.T) {
	im := newImporter(t)
	if removed, err := im.Collect(); err != nil || len(removed) != 0 {
		t.Fatalf("Collect without TmpDir: %v, %v", removed, err)
	}
	if err := os.MkdirAll(im.tmpDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	sha := sum([]byte("x"))
	left := []string{
		filepath.Join(im.tmpDir(), tmpPrefix+sha[:16]+"-0011223344556677"+spoolSuffix),
		filepath.Join(im.tmpDir(), tmpPrefix+sha[:16]+"-8899aabbccddeeff"+outputSuffix),
	}
	running := im.tmpName(sha, outputSuffix)
	others := []string{
		filepath.Join(im.tmpDir(), "notes.txt"),
		filepath.Join(im.tmpDir(), tmpPrefix+"no-suffix"),
		filepath.Join(im.tmpDir(), "other"+spoolSuffix),
		running,
	}
	for _, p := range append(slices.Clone(left), others...) {
		writeFile(t, p, []byte("x"))
	}
	if err := os.Mkdir(filepath.Join(im.tmpDir(), tmpPrefix+"dir"+spoolSuffix), 0o755); err != nil {
		t.Fatal(err)
	}
	removed, err := im.Collect()
	slices.Sort(removed)
	if err != nil || !slices.Equal(removed, left) {
		t.Errorf("Collect removed %v (%v), want %v", removed, err, left)
	}
	for _, p := range others {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("Collect removed %s: %v", p, err)
		}
	}
	im.removeTmp(running)
	if removed, err := im.Collect(); err != nil || len(removed) != 0 {
		t.Errorf("second Collect: %v, %v", removed, err)
	}
}
