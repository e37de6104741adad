package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
)

// Annotations of the image's entry in index.json that name it on import.
// containerd (ctr images import) and Docker 25+ (docker load) take the full
// reference from io.containerd.image.name; the OCI annotation holds the tag,
// as `docker save` writes it.
const (
	annotationImageName = "io.containerd.image.name"
	annotationRefName   = "org.opencontainers.image.ref.name"
)

// writeArchive writes img as an OCI image layout (oci-layout, index.json,
// blobs/sha256/...) named ref, in a directory under tmp, then archives that
// directory to out. out is replaced only once complete (a temporary file
// renamed over it), so an interrupted build never leaves a truncated
// archive that an import would half-read.
func writeArchive(img v1.Image, ref name.Tag, tmp, out string, epoch time.Time) error {
	dir := filepath.Join(tmp, "layout")
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	err = p.AppendImage(img, layout.WithAnnotations(map[string]string{
		annotationImageName: ref.Name(),
		annotationRefName:   ref.TagStr(),
	}))
	if err != nil {
		return fmt.Errorf("oci layout: %w", err)
	}
	f, err := os.CreateTemp(filepath.Dir(out), filepath.Base(out)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // a no-op once renamed
	defer f.Close()
	if err := writeTree(f, dir, epoch); err != nil {
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), out)
}
