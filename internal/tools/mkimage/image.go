package main

import (
	"fmt"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// imagePath is the image's PATH: the Debian tools live in /sbin and
// /usr/sbin (mkfs.ext4, blkid, xfs_growfs), which a container's default
// PATH may leave out, and mount-utils finds them by name.
const imagePath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// layerSpec is one layer and the history entry that says where it came from.
type layerSpec struct {
	layer     v1.Layer
	createdBy string
}

// imageSpec is what the image's config says besides its layers.
type imageSpec struct {
	arch   string
	epoch  time.Time
	labels map[string]string
}

// buildImage stacks the layers, bottom first, into an OCI image whose
// config runs the driver: entrypoint the binary, default command `driver`
// (Kubernetes manifests pass their own args, which replace it).
func buildImage(layers []layerSpec, s imageSpec) (v1.Image, error) {
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	adds := make([]mutate.Addendum, len(layers))
	for i, l := range layers {
		adds[i] = mutate.Addendum{
			Layer:     l.layer,
			MediaType: types.OCILayer,
			History:   v1.History{Created: v1.Time{Time: s.epoch}, CreatedBy: l.createdBy},
		}
	}
	img, err := mutate.Append(img, adds...)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = s.arch, "linux"
	cf.Created = v1.Time{Time: s.epoch}
	cf.Config.Entrypoint = []string{binaryPath}
	cf.Config.Cmd = []string{"driver"}
	cf.Config.Env = []string{imagePath}
	cf.Config.Labels = s.labels
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("image config: %w", err)
	}
	return img, nil
}
