package cluster

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestStartFailureTearsDown makes Start fail at its last step (the node
// cannot be Ready within a nanosecond) and checks that it has torn down
// everything: no process, root, bridge or cgroup of any local cluster is
// left. Gated like TestSmoke.
func TestStartFailureTearsDown(t *testing.T) {
	if os.Getenv("CSI_QCOW2_E2E_CLUSTER") != "1" {
		t.Skip("set CSI_QCOW2_E2E_CLUSTER=1 to start a local Kubernetes cluster (make e2e-cluster)")
	}
	if left := anyClusterLeft(); len(left) > 0 {
		t.Skipf("another local cluster seems to be running: %v", left)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	binDir := binDir(ctx, t)
	image, err := BuildToolImage(ctx, goCommand(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c, err := Start(ctx, Config{BinDir: binDir, Images: []string{image}, Log: testWriter{t}, ReadyTimeout: time.Nanosecond})
	if err == nil {
		c.Stop()
		t.Fatal("Start succeeded with a 1 ns ReadyTimeout")
	}
	t.Logf("Start failed as it should: %v", err)
	// The failed Start kept its logs, and only them.
	roots, _ := filepath.Glob(filepath.Join(os.TempDir(), "csi-qcow2-e2e-[0-9]*"))
	if len(roots) != 1 {
		t.Fatalf("roots after a failed Start: %v, want one with the logs", roots)
	}
	if ents, _ := os.ReadDir(roots[0]); len(ents) != 1 || ents[0].Name() != "logs" {
		t.Errorf("%s holds %v, want only logs", roots[0], ents)
	} else if _, err := os.Stat(filepath.Join(roots[0], "logs", "kubelet.log")); err != nil {
		t.Error(err)
	}
	if err := os.RemoveAll(roots[0]); err != nil {
		t.Fatal(err)
	}
	if left := anyClusterLeft(); len(left) > 0 {
		t.Errorf("left after a failed Start: %v", left)
	}
}

// anyClusterLeft lists what any local cluster would leave: processes naming
// a cluster root, roots, bridges, cgroup roots.
func anyClusterLeft() []string {
	var left []string
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err == nil && strings.Contains(string(b), "/csi-qcow2-e2e-") && !strings.Contains(string(b), "csi-qcow2-e2e-logs") {
			// Not this test's own go test process, whose arguments do not
			// name a root.
			left = append(left, p+": "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	for _, pat := range []string{
		filepath.Join(os.TempDir(), "csi-qcow2-e2e-[0-9]*"),
		"/sys/class/net/cq2e2e*",
		"/sys/fs/cgroup/*/csi-qcow2-e2e-*",
	} {
		m, _ := filepath.Glob(pat)
		left = append(left, m...)
	}
	for _, t := range ProxyTables() {
		left = append(left, "nftables table "+t)
	}
	return left
}
