package deploy_test

import (
	"bytes"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

var updateCRDs = flag.Bool("update-crds", false, "copy the VolumeSnapshot CRDs from the pinned external-snapshotter client module into the overlay and the chart")

// snapshotCRDs are the files taken unchanged from external-snapshotter's
// client module (config/crd); the group snapshot CRDs are left out
// (group snapshots are off: the driver has no group controller service).
var snapshotCRDs = []string{
	"snapshot.storage.k8s.io_volumesnapshotclasses.yaml",
	"snapshot.storage.k8s.io_volumesnapshotcontents.yaml",
	"snapshot.storage.k8s.io_volumesnapshots.yaml",
}

// The CRDs in the overlay and in the chart are the pinned module's, byte
// for byte (the module is the one go.mod pins for the snapshot types).
func TestSnapshotCRDs(t *testing.T) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/kubernetes-csi/external-snapshotter/client/v8").Output()
	if err != nil {
		t.Fatalf("go list -m external-snapshotter/client/v8: %v", err)
	}
	src := filepath.Join(strings.TrimSpace(string(out)), "config", "crd")
	root := repoRoot(t)
	for _, dir := range []string{
		filepath.Join(root, "deploy", "kubernetes", "overlays", "snapshot-controller", "crds"),
		filepath.Join(root, "charts", "csi-qcow2", "files", "crds"),
	} {
		for _, f := range snapshotCRDs {
			want, err := os.ReadFile(filepath.Join(src, f))
			if err != nil {
				t.Fatal(err)
			}
			if *updateCRDs {
				if err := os.WriteFile(filepath.Join(dir, f), want, 0o644); err != nil {
					t.Fatal(err)
				}
				continue
			}
			got, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("%s differs from %s (err %v); -update-crds copies it", filepath.Join(dir, f), filepath.Join(src, f), err)
			}
		}
	}
}
