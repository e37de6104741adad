package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Sidecar is a CSI sidecar the chart runs, as build-sidecars.sh builds it.
type Sidecar struct {
	// Value is the chart's values key whose .image names the sidecar's
	// image (provisioner.image, ...).
	Value string
	// Binary is its file name in build-sidecars.sh's directory, beside
	// Binary.version (the version built) and its path in the image.
	Binary string
	// Repository is the image's name without the tag: upstream's, or a
	// localhost one for a stand-in.
	Repository string
}

// Sidecars are the images SidecarImages makes. The livenessprobe is a
// stand-in (test/e2e/cluster/livenessprobe; build-sidecars.sh says why).
var Sidecars = []Sidecar{
	{"provisioner", "csi-provisioner", "registry.k8s.io/sig-storage/csi-provisioner"},
	{"snapshotter", "csi-snapshotter", "registry.k8s.io/sig-storage/csi-snapshotter"},
	{"snapshotController", "snapshot-controller", "registry.k8s.io/sig-storage/snapshot-controller"},
	{"resizer", "csi-resizer", "registry.k8s.io/sig-storage/csi-resizer"},
	{"livenessProbe", "livenessprobe", "localhost/csi-qcow2-e2e-livenessprobe"},
}

// SidecarImages packs each of Sidecars from binDir (build-sidecars.sh
// prints it) into outDir/BINARY-image.tar, tagged REPOSITORY:VERSION with
// the version binDir/BINARY.version records, entrypoint /BINARY. It returns
// the references by chart value (for --set VALUE.image=REF) and the
// archives (for Config.Images).
func SidecarImages(ctx context.Context, binDir, outDir string) (refs map[string]string, archives []string, err error) {
	refs = map[string]string{}
	for _, s := range Sidecars {
		if err := ctx.Err(); err != nil {
			return nil, nil, err
		}
		bin := filepath.Join(binDir, s.Binary)
		v, err := os.ReadFile(bin + ".version")
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w (run test/e2e/cluster/build-sidecars.sh)", s.Binary, err)
		}
		ref := s.Repository + ":" + strings.TrimSpace(string(v))
		out := filepath.Join(outDir, s.Binary+"-image.tar")
		if err := WriteBinaryImage(out, ref, bin, "/"+s.Binary); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", ref, err)
		}
		refs[s.Value] = ref
		archives = append(archives, out)
	}
	return refs, archives, nil
}
