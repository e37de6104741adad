package cluster

import (
	"archive/tar"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ToolImage is the image BuildToolImage makes: e2etool as /e2etool, its
// entrypoint. Containerd runs it as the pod sandbox.
const ToolImage = SandboxImage

// BuildToolImage builds e2etool statically with goBin and writes
// ToolImage as a docker-archive tarball into dir; it returns its path.
func BuildToolImage(ctx context.Context, goBin, dir string) (string, error) {
	bin := filepath.Join(dir, "e2etool")
	cmd := exec.CommandContext(ctx, goBin, "build", "-trimpath", "-ldflags=-s -w", "-o", bin, "github.com/csi-qcow2/csi-qcow2/test/e2e/cluster/e2etool")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build e2etool: %v: %s", err, out)
	}
	out := filepath.Join(dir, "e2etool-image.tar")
	if err := WriteBinaryImage(out, ToolImage, bin, "/e2etool"); err != nil {
		return "", err
	}
	return out, nil
}

// ImportImage imports an image archive (docker-archive or OCI layout
// tarball) into containerd's k8s.io namespace, where the kubelet finds it
// (pods name it with imagePullPolicy Never).
func (c *Cluster) ImportImage(ctx context.Context, archive string) error {
	out, err := exec.CommandContext(ctx, "ctr", "-a", c.ContainerdSocket, "-n", "k8s.io", "images", "import", archive).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ctr images import %s: %v: %s", archive, err, out)
	}
	c.logf("imported %s", archive)
	return nil
}

// ArchiveImageName is the reference an OCI-layout archive (make image's)
// names its image by: the io.containerd.image.name annotation of its
// index.json, which ctr import tags the image with.
func ArchiveImageName(archive string) (string, error) {
	f, err := os.Open(archive)
	if err != nil {
		return "", err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return "", fmt.Errorf("%s: no index.json", archive)
		}
		if err != nil {
			return "", err
		}
		if strings.TrimPrefix(h.Name, "./") != "index.json" {
			continue
		}
		var idx struct {
			Manifests []struct {
				Annotations map[string]string `json:"annotations"`
			} `json:"manifests"`
		}
		if err := json.NewDecoder(tr).Decode(&idx); err != nil {
			return "", fmt.Errorf("%s: index.json: %w", archive, err)
		}
		for _, m := range idx.Manifests {
			if n := m.Annotations["io.containerd.image.name"]; n != "" {
				return n, nil
			}
		}
		return "", fmt.Errorf("%s: index.json names no image", archive)
	}
}
