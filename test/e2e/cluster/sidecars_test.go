package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestSidecarImages(t *testing.T) {
	bins, out := t.TempDir(), t.TempDir()
	want := map[string]string{}
	for i, s := range Sidecars {
		if err := os.WriteFile(filepath.Join(bins, s.Binary), []byte(s.Binary), 0o755); err != nil {
			t.Fatal(err)
		}
		v := fmt.Sprintf("v1.%d.0", i)
		if err := os.WriteFile(filepath.Join(bins, s.Binary+".version"), []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		want[s.Value] = s.Repository + ":" + v
	}
	refs, archives, err := SidecarImages(context.Background(), bins, out)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, refs); diff != "" {
		t.Errorf("refs (-want +got):\n%s", diff)
	}
	if len(archives) != len(Sidecars) {
		t.Fatalf("%d archives, want %d", len(archives), len(Sidecars))
	}
	for i, s := range Sidecars {
		ep, entries := readImage(t, archives[i], refs[s.Value])
		if len(ep) != 1 || ep[0] != "/"+s.Binary {
			t.Errorf("%s: entrypoint %q", s.Binary, ep)
		}
		if len(entries) != 1 || string(entries[0].Data) != s.Binary {
			t.Errorf("%s: layer %+v", s.Binary, entries)
		}
	}
	os.Remove(filepath.Join(bins, "csi-resizer.version"))
	if _, _, err := SidecarImages(context.Background(), bins, out); err == nil {
		t.Error("no error without csi-resizer.version")
	}
}
