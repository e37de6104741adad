package driver

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/csi-qcow2/csi-qcow2/internal/qemutest"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// 50 callers at once create and delete volumes, snapshots of both types
// and clones over a few names, so that the same names meet: nothing is
// made twice, every layer left checks clean, and once every object is
// deleted no layer file is left.
func TestConcurrentCallsOnSharedNames(t *testing.T) {
	d, _ := startDriver(t, Config{MaxChainDepth: 4})
	c := controllerServer{d: d}
	ctx := context.Background()
	const callers, calls = 50, 20
	var wg sync.WaitGroup
	errs := make(chan error, callers*calls)
	var mu sync.Mutex
	done := map[string]int{}
	for g := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for range calls {
				what, err := randomCall(ctx, c, rng)
				if err != nil {
					errs <- err
				}
				mu.Lock()
				done[what+" "+status.Code(err).String()]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("calls by result: %v", done)
	for _, what := range []string{"create", "delete", "snapshot", "delete-snapshot", "clone", "restore"} {
		if done[what+" OK"] == 0 {
			t.Errorf("no %s call succeeded: the workload does not reach it", what)
		}
	}
	st, _ := d.store()
	seen := map[string]bool{}
	for _, v := range st.ListVolumes() {
		if seen[v.Name] {
			t.Errorf("volume name %q listed twice", v.Name)
		}
		seen[v.Name] = true
	}
	checkStoreLayers(t, st.Root())
	for _, sn := range st.ListSnapshots() {
		if _, err := c.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: sn.ID}); err != nil {
			t.Fatal(err)
		}
	}
	for _, v := range st.ListVolumes() {
		if _, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.ID}); err != nil {
			t.Fatal(err)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(st.Root(), "layers", "*")); len(left) > 0 {
		t.Errorf("layer files left once every object went: %v", left)
	}
}

// randomCall makes one call on a small set of names; Aborted (another
// call holds the object), NotFound (its source is gone) and
// AlreadyExists (a clone and a volume share a name) are answers a CO
// sees and retries, anything else is a failure.
func randomCall(ctx context.Context, c controllerServer, rng *rand.Rand) (string, error) {
	st, _ := c.d.store()
	vol := fmt.Sprintf("pvc-%d", rng.IntN(4))
	snap := fmt.Sprintf("snap-%d", rng.IntN(4))
	var err error
	what := []string{"create", "delete", "snapshot", "delete-snapshot", "clone", "restore"}[rng.IntN(6)]
	switch what {
	case "create":
		_, err = c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: vol, VolumeCapabilities: []*csi.VolumeCapability{blockCap()},
			CapacityRange: &csi.CapacityRange{RequiredBytes: 8 << 20}})
	case "delete":
		_, err = c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: st.VolumeID(vol)})
	case "snapshot":
		typ := []string{"external", "internal"}[rng.IntN(2)]
		_, err = c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: snap + "-" + typ, SourceVolumeId: st.VolumeID(vol),
			Parameters: map[string]string{"type": typ}})
	case "delete-snapshot":
		_, err = c.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: st.SnapshotID(snap + "-" + []string{"external", "internal"}[rng.IntN(2)])})
	case "clone":
		_, err = c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "clone-" + vol, VolumeCapabilities: []*csi.VolumeCapability{blockCap()},
			VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: st.VolumeID(vol)}}}})
	case "restore":
		typ := []string{"external", "internal"}[rng.IntN(2)]
		_, err = c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "restore-" + snap + typ, VolumeCapabilities: []*csi.VolumeCapability{blockCap()},
			VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: st.SnapshotID(snap + "-" + typ)}}}})
	}
	switch status.Code(err) {
	case codes.OK, codes.Aborted, codes.NotFound, codes.AlreadyExists:
		return what, nil
	}
	return what, err
}

// checkStoreLayers runs the engine's check on every layer file and
// qemu-img check on a sample.
func checkStoreLayers(t *testing.T, root string) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(root, "layers", "*.qcow2"))
	for i := 0; i < len(files); i += max(1, len(files)/8) {
		qemutest.Run(t, "qemu-img", "check", "-U", files[i])
	}
	for _, f := range files {
		if _, err := os.Stat(f); err != nil {
			continue
		}
		res, err := qcow2.Check(f, qcow2.CheckOptions{})
		switch {
		case err != nil:
			t.Errorf("%s: %v", filepath.Base(f), err)
		case res.Corruptions > 0 || res.CheckErrors > 0:
			t.Errorf("%s: %d corruptions, %d check errors", filepath.Base(f), res.Corruptions, res.CheckErrors)
		}
	}
}
