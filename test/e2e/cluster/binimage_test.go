package cluster

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/test/e2e/imagepack"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// readImage opens ref in the docker archive at path and returns its
// entrypoint and the entries of its only layer.
func readImage(t *testing.T, path, ref string) ([]string, []imagepack.File) {
	t.Helper()
	tag, err := name.NewTag(ref)
	if err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(path, &tag)
	if err != nil {
		t.Fatalf("%s in %s: %v", ref, path, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != runtime.GOARCH {
		t.Errorf("platform %s/%s, want linux/%s", cf.OS, cf.Architecture, runtime.GOARCH)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers %d, %v; want 1", len(layers), err)
	}
	files, err := imagepack.LayerFiles(layers[0])
	if err != nil {
		t.Fatal(err)
	}
	return cf.Config.Entrypoint, files
}

func TestWriteBinaryImage(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "prog")
	data := []byte("\x7fELF not really\x00\x01\x02")
	if err := os.WriteFile(bin, data, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		entry, want string
		entries     []imagepack.File
	}{
		{"/prog", "/prog", []imagepack.File{{Name: "prog", Mode: 0o755, Data: data}}},
		{"usr/bin/prog", "/usr/bin/prog", []imagepack.File{
			{Name: "usr/", Mode: 0o755, Data: []byte{}},
			{Name: "usr/bin/", Mode: 0o755, Data: []byte{}},
			{Name: "usr/bin/prog", Mode: 0o755, Data: data},
		}},
	} {
		out := filepath.Join(dir, "image.tar")
		ref := "registry.k8s.io/sig-storage/csi-provisioner:v6.4.0"
		if err := WriteBinaryImage(out, ref, bin, tc.entry); err != nil {
			t.Fatal(err)
		}
		ep, entries := readImage(t, out, ref)
		if diff := cmp.Diff([]string{tc.want}, ep); diff != "" {
			t.Errorf("%s: entrypoint (-want +got):\n%s", tc.entry, diff)
		}
		if diff := cmp.Diff(tc.entries, entries); diff != "" {
			t.Errorf("%s: layer (-want +got):\n%s", tc.entry, diff)
		}
	}
	if err := WriteBinaryImage(filepath.Join(dir, "x.tar"), "Not A Ref", bin, "/prog"); err == nil {
		t.Error("a bad reference was taken")
	}
	if err := WriteBinaryImage(filepath.Join(dir, "x.tar"), "localhost/x:v1", bin, "/"); err == nil {
		t.Error("entry / was taken")
	}
}
