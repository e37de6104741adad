package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// sweepFile records, in the root, what SweepRoot cannot tell from the
// root's name: the network namespaces that existed before Start and the
// host directories Start found missing.
const sweepFile = "sweep.json"

type sweepRecord struct {
	NetnsBefore []string
	HostDirs    []string
	KubeletDir  bool // KubeletDir is bound
}

func (c *Cluster) writeSweepRecord() error {
	r := sweepRecord{HostDirs: c.hostDirs, KubeletDir: c.kubeletBound}
	for n := range c.netnsSeen {
		r.NetnsBefore = append(r.NetnsBefore, n)
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return os.WriteFile(c.path(sweepFile), b, 0o644)
}

// SweepRoot tears down what a cluster whose harness was killed (SIGKILL:
// no Stop ran) left behind, from its root: the processes naming the root
// (containerd's shims; the components died with the harness, Pdeathsig),
// the kubelet's cgroups, mounts under the root, loop devices over files in
// it, the network namespaces and host directories its sweep record names,
// the bridge, kube-proxy's nftables tables if no other cluster runs, and
// the root itself.
func SweepRoot(root string, log io.Writer) error {
	root = filepath.Clean(root)
	base := filepath.Base(root)
	id, ok := strings.CutPrefix(base, "csi-qcow2-e2e-")
	if !ok || id == "" || strings.Contains(id, "logs") {
		return fmt.Errorf("%s is no local cluster's root (/tmp/csi-qcow2-e2e-ID)", root)
	}
	c := &Cluster{
		cfg:        Config{Log: log},
		Root:       root,
		Bridge:     "cq2e2e" + lastN(id, 8),
		CgroupRoot: "/csi-qcow2-e2e-" + id,
	}
	var rec sweepRecord
	if b, err := os.ReadFile(c.path(sweepFile)); err == nil {
		if err := json.Unmarshal(b, &rec); err != nil {
			return fmt.Errorf("%s: %w", c.path(sweepFile), err)
		}
	}
	c.kubeletBound, c.hostDirs = rec.KubeletDir, rec.HostDirs
	// Without a record no namespace can be told to be the cluster's.
	c.netnsSeen = listNetns()
	if rec.NetnsBefore != nil || len(rec.HostDirs) > 0 {
		c.netnsSeen = map[string]bool{}
		for _, n := range rec.NetnsBefore {
			c.netnsSeen[n] = true
		}
	}
	roots, _ := filepath.Glob(filepath.Join(filepath.Dir(root), "csi-qcow2-e2e-[0-9]*"))
	if err := errors.Join(c.sweep(len(roots) == 1 && roots[0] == root)...); err != nil {
		return err
	}
	return os.RemoveAll(root)
}
