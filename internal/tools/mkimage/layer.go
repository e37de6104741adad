package main

import (
	"compress/gzip"
	"fmt"
	"io"
	"os"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// layerFrom makes an OCI gzip layer from the tar stream write produces.
// The stream goes to a file in tmp first: the library reads a layer's
// uncompressed stream twice (diff ID, then compression), and a file makes
// that two reads instead of two walks of the tree. The compressed bytes are
// kept in memory once made (WithCompressedCaching), since the digest and
// the layout write both need them and gzip is the slow part.
func layerFrom(tmp string, write func(io.Writer) error) (v1.Layer, error) {
	f, err := os.CreateTemp(tmp, "layer-*.tar")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if err := write(f); err != nil {
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	l, err := tarball.LayerFromFile(f.Name(),
		tarball.WithMediaType(types.OCILayer),
		tarball.WithCompressionLevel(gzip.DefaultCompression),
		tarball.WithCompressedCaching)
	if err != nil {
		return nil, fmt.Errorf("layer from %s: %w", f.Name(), err)
	}
	return l, nil
}
