package golden

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestImportFileRoots: file: URLs read files under a root, and nothing
// else: not without roots, not outside them, not through "..", an
// escaping symlink, another host, a relative path, a FIFO.
func TestImportFileRoots(t *testing.T) {
	base := t.TempDir()
	root := filepath.Join(base, "root")
	outside := filepath.Join(base, "outside")
	for _, d := range []string{root, filepath.Join(root, "sub"), outside} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	img := rawImage(1<<20, 6)
	sha := sum(img)
	writeFile(t, filepath.Join(root, "sub", "a.img"), img)
	writeFile(t, filepath.Join(outside, "a.img"), img)
	mustSymlink(t, "sub/a.img", filepath.Join(root, "inside-link.img"))
	mustSymlink(t, filepath.Join(outside, "a.img"), filepath.Join(root, "abs-link.img"))
	mustSymlink(t, "../outside/a.img", filepath.Join(root, "rel-link.img"))
	mustSymlink(t, "../outside", filepath.Join(root, "dir-link"))
	if err := syscall.Mkfifo(filepath.Join(root, "fifo.img"), 0o644); err != nil {
		t.Fatal(err)
	}

	im := newImporter(t)
	wantInvalid(t, im, Source{URL: "file://" + root + "/sub/a.img", SHA256: sha}, "file: URLs are not allowed")

	im.FileRoots = []string{filepath.Join(base, "other"), root}
	for _, url := range []string{"file://" + root + "/sub/a.img", "file://localhost" + root + "/inside-link.img"} {
		im := newImporter(t)
		im.FileRoots = []string{root}
		path, info, err := im.Import(context.Background(), Source{URL: url, SHA256: sha})
		if err != nil {
			t.Fatalf("%s: %v", url, err)
		}
		if got := readImage(t, path); !bytes.Equal(got, img) || info.DownloadedBytes != int64(len(img)) {
			t.Errorf("%s: the image does not read back as the file (info %+v)", url, info)
		}
	}
	for _, tc := range []struct{ url, want string }{
		{"file://" + outside + "/a.img", "not under any of the allowed file roots"},
		{"file://" + root + "/../outside/a.img", `contains ".."`},
		{"file://" + root + "/sub/%2e%2e/../outside/a.img", `contains ".."`},
		{"file://" + root + "/abs-link.img", "cannot be read"},
		{"file://" + root + "/rel-link.img", "cannot be read"},
		{"file://" + root + "/dir-link/a.img", "cannot be read"},
		{"file://" + root + "/missing.img", "cannot be read"},
		{"file://" + root + "/fifo.img", "not a regular file"},
		{"file://" + root + "/sub", "not a regular file"},
		{"file://" + root, "not under any"},
		{"file://otherhost" + root + "/sub/a.img", `names host "otherhost"`},
		{"file:sub/a.img", "absolute path"},
		{"file://" + root + "/sub/a.img?x=1", "query"},
	} {
		wantInvalid(t, im, Source{URL: tc.url, SHA256: sha}, tc.want)
	}
}

func mustSymlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}
