package driver

import (
	"fmt"
	"path/filepath"
	"strings"
)

// DriverName is the CSI driver's name, as the CSIDriver object and the
// StorageClasses name it.
const DriverName = "csi-qcow2.io"

// TopologyKey is the per-node topology segment of every volume and
// snapshot: they live on one node's disk.
const TopologyKey = "topology.csi-qcow2.io/node"

// Config is what `csi-qcow2 driver` is started with.
type Config struct {
	// Endpoint is the unix socket the CSI services listen on
	// (unix:///path or /path).
	Endpoint string
	// NodeID names this node (the Kubernetes node name).
	NodeID string
	// StateDir is the store's root.
	StateDir string
	// Version is the build's version, reported by GetPluginInfo.
	Version string
	// MaxChainDepth caps the files of a volume's chain (store).
	MaxChainDepth int
	// Overcommit is the ratio of virtual to physical bytes GetCapacity
	// promises (1: never promise more than the disk holds).
	Overcommit float64
	// ImageFileRoots are the directories `file:` image URLs may name.
	ImageFileRoots []string
	// MaxImageBytes bounds an image download (0: golden's default).
	MaxImageBytes int64
	// MetricsAddress, if set, serves Prometheus metrics there (host:port).
	MetricsAddress string
	// AttachPath is how staged volumes become block devices: "nbd" (the
	// kernel's nbd driver), "fuse" (a FUSE file under a loop device), or
	// "auto"/"" (nbd where the node has it), or "none" (nothing is staged:
	// an instance beside a central sidecar).
	AttachPath string
	// KubeletRegistrationDir, if set, is the kubelet's plugins_registry
	// directory: the driver registers itself there, as node-driver-registrar
	// would (for clusters that cannot run the registrar's image).
	KubeletRegistrationDir string
	// KubeletRegistrationPath is the CSI socket's path on the host, which
	// the kubelet dials; needed with KubeletRegistrationDir.
	KubeletRegistrationPath string
}

func (c *Config) check() error {
	switch {
	case c.NodeID == "":
		return fmt.Errorf("a node ID is needed (--node-id)")
	case len(c.NodeID) > 256:
		return fmt.Errorf("node ID is %d bytes; CSI allows 256", len(c.NodeID))
	case c.StateDir == "":
		return fmt.Errorf("a state directory is needed (--state-dir)")
	case c.Overcommit <= 0:
		return fmt.Errorf("overcommit ratio %v must be positive", c.Overcommit)
	case c.KubeletRegistrationDir != "" && !filepath.IsAbs(c.KubeletRegistrationPath):
		return fmt.Errorf("--kubelet-registration-dir needs --kubelet-registration-path, the socket's absolute path on the host (got %q)", c.KubeletRegistrationPath)
	}
	return nil
}

// socketPath turns a CSI endpoint into a socket path; only unix sockets
// are served.
func socketPath(endpoint string) (string, error) {
	switch {
	case strings.HasPrefix(endpoint, "unix://"):
		endpoint = strings.TrimPrefix(endpoint, "unix://")
	case strings.Contains(endpoint, "://"):
		return "", fmt.Errorf("endpoint %q: only unix sockets are served", endpoint)
	}
	if endpoint == "" {
		return "", fmt.Errorf("an endpoint is needed (--endpoint)")
	}
	return endpoint, nil
}
