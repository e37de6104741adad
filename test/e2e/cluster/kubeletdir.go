package cluster

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// KubeletDir is the kubelet's root directory, as on any node: a bind mount
// of Root/kubelet, made at Start and gone at Stop.
const KubeletDir = "/var/lib/kubelet"

// bindKubeletDir mounts Root/kubelet at KubeletDir (made if missing),
// rshared. It refuses where another kubelet's directory is in use: a
// mount point, or anything in it.
func (c *Cluster) bindKubeletDir() error {
	ents, err := os.ReadDir(KubeletDir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(KubeletDir, 0o755); err != nil {
			return err
		}
	case err != nil:
		return err
	case len(ents) > 0 || isMountPoint(KubeletDir):
		return fmt.Errorf("%s is in use (another kubelet?): one cluster at a time", KubeletDir)
	}
	if err := syscall.Mount(c.path("kubelet"), KubeletDir, "", syscall.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind-mount %s at %s: %w", c.path("kubelet"), KubeletDir, err)
	}
	c.kubeletBound = true
	if err := c.writeSweepRecord(); err != nil {
		return err
	}
	if err := syscall.Mount("", KubeletDir, "", syscall.MS_SHARED|syscall.MS_REC, ""); err != nil {
		return fmt.Errorf("make %s rshared: %w", KubeletDir, err)
	}
	return nil
}

// isMountPoint says whether path is mounted on (it and its parent are on
// different devices, or it is a bind of a directory on the same one).
func isMountPoint(path string) bool {
	for _, mp := range mountPoints() {
		if mp == path {
			return true
		}
	}
	return false
}
