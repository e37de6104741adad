package external

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/test/e2e/imagepack"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func TestBuildImages(t *testing.T) {
	busybox := "/bin/busybox"
	if _, err := os.Stat(busybox); err != nil {
		t.Skip("no /bin/busybox (Debian busybox-static)")
	}
	dir := t.TempDir()
	agnhost := filepath.Join(dir, "agnhost")
	if err := os.WriteFile(agnhost, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A stand-in for the coreutils tree: GNU dd must land in the glibc
	// image, over busybox's link.
	coreutils := filepath.Join(dir, "coreutils")
	if err := os.MkdirAll(filepath.Join(coreutils, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(coreutils, "bin", "dd"), []byte("GNU dd"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("dash", filepath.Join(coreutils, "bin", "sh")); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "images.tar")
	if err := BuildImages(context.Background(), busybox, agnhost, coreutils, out); err != nil {
		t.Fatal(err)
	}
	for _, ref := range ImageRefs() {
		tag, err := name.NewTag(ref)
		if err != nil {
			t.Fatal(err)
		}
		img, err := tarball.ImageFromPath(out, &tag)
		if err != nil {
			t.Fatalf("%s: %v", ref, err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		entries := map[string]*imagepack.File{}
		layers, err := img.Layers()
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range layers {
			files, err := imagepack.LayerFiles(l)
			if err != nil {
				t.Fatal(err)
			}
			for i := range files {
				entries[files[i].Name] = &files[i]
			}
		}
		for _, want := range []string{"bin/sh", "bin/dd", "bin/sha256sum", "bin/blockdev", "tmp/"} {
			if entries[want] == nil {
				t.Errorf("%s: no %s", ref, want)
			}
		}
		// The glibc image's sh is dash: busybox's would run its own dd.
		wantSh := "busybox"
		if ref == GlibcDNSTestingImage {
			wantSh = "dash"
		}
		if h := entries["bin/sh"]; h != nil && h.Link != wantSh {
			t.Errorf("%s: bin/sh is not a link to %s", ref, wantSh)
		}
		// The last layer's entry wins: GNU dd only in the glibc image.
		if h := entries["bin/dd"]; h != nil && (h.Link == "") != (ref == GlibcDNSTestingImage) {
			t.Errorf("%s: bin/dd is a regular file: %v, want %v", ref, h.Link == "", ref == GlibcDNSTestingImage)
		}
		hasAgnhost := entries["agnhost"] != nil
		wantAgnhost := ref == AgnhostImage || ref == PauseImage
		if hasAgnhost != wantAgnhost {
			t.Errorf("%s: agnhost in the image: %v, want %v", ref, hasAgnhost, wantAgnhost)
		}
		if ref == AgnhostImage && !slices.Equal(cf.Config.Entrypoint, []string{"/agnhost"}) {
			t.Errorf("%s: entrypoint %q", ref, cf.Config.Entrypoint)
		}
	}
}
