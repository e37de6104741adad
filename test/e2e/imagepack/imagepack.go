// Package imagepack builds the small container images the end-to-end
// harnesses import into the local cluster (test/e2e/cluster's tool and
// sidecar images, test/e2e/external's test images): layers from a list of
// files, owned by root and dated 1970 so that the same files give the same
// digest, and linux images of this machine's architecture. It imports
// go-containerregistry only, nothing of the project.
package imagepack

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// File is one entry of a layer: a directory (Name ends in /), a symbolic
// link (Link set) or a regular file. Names are relative to the root.
type File struct {
	Name string
	Mode int64
	Data []byte
	Link string
}

// Layer makes a layer of files, in order.
func Layer(files []File) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	for _, f := range files {
		h := &tar.Header{Name: f.Name, Mode: f.Mode, Size: int64(len(f.Data)), Typeflag: tar.TypeReg, ModTime: epoch, Format: tar.FormatPAX}
		switch {
		case f.Link != "":
			h.Typeflag, h.Linkname, h.Mode = tar.TypeSymlink, f.Link, 0o777
		case strings.HasSuffix(f.Name, "/"):
			h.Typeflag = tar.TypeDir
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.Data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	}, tarball.WithCompressionLevel(gzip.BestSpeed), tarball.WithCompressedCaching)
}

// WithParents is files preceded by an entry for every directory above a
// file's name that files do not list (mode 0755).
func WithParents(files []File) []File {
	seen := map[string]bool{}
	for _, f := range files {
		seen[f.Name] = true
	}
	var out []File
	for _, f := range files {
		for i, c := range f.Name {
			if d := f.Name[:i+1]; c == '/' && i < len(f.Name)-1 && !seen[d] {
				seen[d] = true
				out = append(out, File{Name: d, Mode: 0o755})
			}
		}
		out = append(out, f)
	}
	return out
}

// Image stacks layers into a linux image of this machine's architecture
// with cfg, entrypoint and cmd.
func Image(cfg v1.Config, entrypoint, cmd []string, layers ...v1.Layer) (v1.Image, error) {
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Config = cfg
	cf.Config.Entrypoint, cf.Config.Cmd = entrypoint, cmd
	return mutate.ConfigFile(img, cf)
}

// TreeFiles lists the directories, regular files and symbolic links under
// root as layer entries (names relative to root, in lexical order; names
// starting with a dot at the top are left out).
func TreeFiles(root string) ([]File, error) {
	var files []File
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		if !strings.Contains(rel, "/") && strings.HasPrefix(rel, ".") {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		mode := int64(info.Mode().Perm())
		switch {
		case d.IsDir():
			files = append(files, File{Name: rel + "/", Mode: mode})
		case d.Type()&fs.ModeSymlink != 0:
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			files = append(files, File{Name: rel, Link: link})
		case d.Type().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			files = append(files, File{Name: rel, Mode: mode, Data: data})
		}
		return nil
	})
	return files, err
}

// LayerFiles reads a layer back into its entries, in order (for tests).
func LayerFiles(l v1.Layer) ([]File, error) {
	rc, err := l.Uncompressed()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	var files []File
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files, nil
		}
		if err != nil {
			return nil, err
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			return nil, err
		}
		files = append(files, File{Name: h.Name, Mode: h.Mode, Data: data, Link: h.Linkname})
	}
}
