package cluster

import (
	"fmt"
	"os"
	"path"
	"strings"

	"github.com/csi-qcow2/csi-qcow2/test/e2e/imagepack"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// WriteBinaryImage packs the static binary bin into a one-layer linux
// image for this machine's architecture and writes it, tagged ref, as a
// docker-archive tarball at out (ctr images import takes it). In the image
// the binary is the file entry (a path from the root, mode 0755, owned by
// root)
// and the entrypoint; there is nothing else but the directories above it.
func WriteBinaryImage(out, ref, bin, entry string) error {
	tag, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		return err
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		return err
	}
	entry = path.Clean("/" + entry)
	if entry == "/" {
		return fmt.Errorf("image %s: no path for the binary", ref)
	}
	name := strings.TrimPrefix(entry, "/")
	layer, err := imagepack.Layer(imagepack.WithParents([]imagepack.File{{Name: name, Mode: 0o755, Data: data}}))
	if err != nil {
		return err
	}
	img, err := imagepack.Image(v1.Config{}, []string{entry}, nil, layer)
	if err != nil {
		return err
	}
	tmp := out + ".tmp"
	if err := tarball.WriteToFile(tmp, tag, img); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, out)
}
