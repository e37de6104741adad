package cluster

import (
	"context"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/csi-qcow2/csi-qcow2/pkg/driver"
	"github.com/csi-qcow2/csi-qcow2/test/e2e/external"
)

// repoRoot is the repository, two directories above this package's.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// TestDriverInCluster is issue 13's run: the local cluster with the chart
// installed (only what this cluster needs changed; docs/e2e.md), our e2e
// (test/e2e/csi) and the external storage suite against it, and a
// teardown that leaves nothing. CSI_QCOW2_E2E_CLUSTER=1 turns it on (make
// e2e-cluster). CSI_QCOW2_E2E_EXTERNAL picks the external suite's passes:
// all (the default: main, and the snapshot pass with either snapshot
// class), snapshots (the two snapshot passes), or 0 (none);
// CSI_QCOW2_E2E_FOCUS narrows each pass to the specs whose names also
// match it (a regular expression), to run again what failed.
func TestDriverInCluster(t *testing.T) {
	if os.Getenv("CSI_QCOW2_E2E_CLUSTER") != "1" {
		t.Skip("set CSI_QCOW2_E2E_CLUSTER=1 to install the chart into a local Kubernetes cluster (make e2e-cluster)")
	}
	// SIGINT or SIGTERM ends the run through the teardown below, not
	// around it (go test would otherwise die and leave the cluster).
	sigCtx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	passes := os.Getenv("CSI_QCOW2_E2E_EXTERNAL")
	switch passes {
	case "":
		passes = "all"
	case "all", "snapshots", "0":
	default:
		t.Fatalf("CSI_QCOW2_E2E_EXTERNAL=%q: want all, snapshots or 0", passes)
	}
	ctx, cancel := context.WithTimeout(sigCtx, 80*time.Minute)
	defer cancel()
	root := repoRoot(t)
	binDir := binDir(ctx, t)
	images := t.TempDir()

	tool, err := BuildToolImage(ctx, goCommand(), images)
	if err != nil {
		t.Fatal(err)
	}
	sidecarBin := scriptDir(ctx, t, "./build-sidecars.sh")
	refs, archives, err := SidecarImages(ctx, sidecarBin, images)
	if err != nil {
		t.Fatal(err)
	}
	driverImage := filepath.Join(root, "bin", "csi-qcow2-image.tar")
	driverRef, err := ArchiveImageName(driverImage)
	if err != nil {
		t.Fatalf("%v (make image builds it; make e2e-cluster runs it first)", err)
	}
	// e2e.test, kubectl and agnhost, beside the cluster's binaries.
	scriptDir(ctx, t, "./build-e2e-test.sh")
	all := append([]string{tool, driverImage, buildTestImages(ctx, t, binDir, images)}, archives...)

	c, err := Start(ctx, Config{BinDir: binDir, Log: testWriter{t}, Images: all})
	if err != nil {
		t.Fatal(err)
	}
	pids := c.PIDs()
	stopped := false
	defer func() {
		if !stopped {
			keepLogs(t, c)
			c.Stop()
		}
	}()

	if err := c.InstallSnapshotCRDs(ctx, goCommand()); err != nil {
		t.Fatal(err)
	}
	chart := Chart{Dir: filepath.Join(root, "charts", "csi-qcow2"), Release: "csi-qcow2", Namespace: "csi-qcow2",
		Values: chartValues(c, refs, driverRef), Timeout: 5 * time.Minute}
	if err := c.InstallChart(ctx, chart); err != nil {
		t.Fatal(err)
	}

	t.Run("csi", func(t *testing.T) { runOurE2E(ctx, t, c, root) })
	if passes != "0" {
		t.Run("external", func(t *testing.T) { runExternal(ctx, t, c, root, binDir, passes == "all") })
	}

	if t.Failed() {
		keepLogs(t, c)
	}
	stopped = true
	if err := c.Stop(); err != nil {
		t.Fatalf("teardown: %v", err)
	}
	checkNothingLeft(t, c, pids)
}

// chartValues are the values the local cluster needs; everything else is
// the chart's default. Images: the ones built here, under their upstream
// names and versions (a stand-in for livenessprobe, which the module proxy
// does not serve). registrar.enabled=false: the driver registers itself
// (node-driver-registrar is not served either).
// driver.stateDir: the store stays under the cluster's root.
func chartValues(c *Cluster, sidecars map[string]string, driverImage string) map[string]any {
	vals := map[string]any{
		"registrar":          map[string]any{"enabled": false},
		"snapshotController": map[string]any{"enabled": true},
		"driver":             map[string]any{"image": driverImage, "stateDir": c.path("csi-qcow2")},
	}
	for key, ref := range sidecars {
		if m, ok := vals[key].(map[string]any); ok {
			m["image"] = ref
		} else {
			vals[key] = map[string]any{"image": ref}
		}
	}
	return vals
}

// runOurE2E runs test/e2e/csi against the cluster, as `go test` with
// KUBECONFIG set.
func runOurE2E(ctx context.Context, t *testing.T, c *Cluster, root string) {
	// The golden-image test serves its image on the gateway, which the
	// node plugin's pod reaches.
	env := append(os.Environ(), "KUBECONFIG="+c.Kubeconfig, "CSI_QCOW2_E2E_LISTEN="+net.JoinHostPort(gatewayIP, "0"))
	// The node plugin's container has this process's capability set.
	if ok, err := driver.CanGrowExt4Online(); err != nil {
		t.Fatal(err)
	} else if !ok {
		env = append(env, "CSI_QCOW2_E2E_EXT4_ONLINE_GROW=0")
	}
	cmd := exec.CommandContext(ctx, goCommand(), "test", "-count=1", "-v", "-timeout=40m", "./test/e2e/csi/")
	cmd.Dir, cmd.Env = root, env
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Errorf("test/e2e/csi: %v", err)
	}
	t.Logf("test/e2e/csi took %.0f s", time.Since(start).Seconds())
}

// scriptDir runs a build script of this directory and returns the
// directory it prints last.
func scriptDir(ctx context.Context, t *testing.T, script string) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, script)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v", script, err)
	}
	f := strings.Fields(string(out))
	if len(f) == 0 {
		t.Fatalf("%s printed nothing", script)
	}
	return f[len(f)-1]
}

// buildTestImages makes the images the external suite's pods and ours
// run (busybox and the rest, under e2e.test's references) and returns the
// archive.
func buildTestImages(ctx context.Context, t *testing.T, binDir, dir string) string {
	t.Helper()
	out := filepath.Join(dir, "e2e-images.tar")
	if err := external.BuildImagesFromDebian(ctx, filepath.Join(cacheDir(t), "busybox"), filepath.Join(binDir, "agnhost"), out); err != nil {
		t.Fatal(err)
	}
	return out
}

func runExternal(ctx context.Context, t *testing.T, c *Cluster, root, binDir string, main bool) {
	opts := external.Options{
		E2ETest: filepath.Join(binDir, "e2e.test"), Kubectl: filepath.Join(binDir, "kubectl"),
		Ginkgo: filepath.Join(binDir, "ginkgo"), Procs: externalProcs(t),
		Kubeconfig: c.Kubeconfig,
		ReportDir:  c.path("logs", "external"), Log: os.Stdout,
	}
	// What this cluster cannot run for reasons outside the driver
	// (external.LocalClusterSkips says why).
	skips := append([]string{}, external.LocalClusterSkips...)
	if ok, _ := driver.CanGrowExt4Online(); !ok {
		skips = append(skips, external.SkipExt4Growth)
	}
	testDriver := filepath.Join(root, "test", "e2e", "testdriver.yaml")
	internal := external.SnapshotPass(filepath.Join(root, "test", "e2e", "testdriver-internal-snapshots.yaml"))
	internal.Name += "-internal"
	passes := []external.Pass{external.SnapshotPass(testDriver), internal}
	if main {
		passes = append([]external.Pass{external.MainPass(testDriver)}, passes...)
	}
	for _, p := range passes {
		p.Skip = append(p.Skip, skips...)
		if focus := os.Getenv("CSI_QCOW2_E2E_FOCUS"); focus != "" {
			p = p.Narrowed(focus)
		}
		start := time.Now()
		r, err := external.Run(ctx, opts, p)
		if err != nil {
			t.Errorf("external suite, %s pass: %v", p.Name, err)
			continue
		}
		t.Logf("external suite, %s pass: %d passed, %d failed, %d skipped in %.0f s", p.Name, r.Passed, r.Failed, r.Skipped, time.Since(start).Seconds())
		if r.Failed > 0 || len(r.SuiteFailures) > 0 {
			t.Errorf("external suite, %s pass: %d failed %v", p.Name, r.Failed, r.SuiteFailures)
		}
	}
}

// externalProcs is how many specs of the external suite run at once
// (CSI_QCOW2_E2E_PROCS, default 4): they mostly wait on pods, so even 2
// cores keep several busy.
func externalProcs(t *testing.T) int {
	v := os.Getenv("CSI_QCOW2_E2E_PROCS")
	if v == "" {
		return 4
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("CSI_QCOW2_E2E_PROCS=%q: want a count of processes", v)
	}
	return n
}

// cacheDir is the build scripts' cache (CSI_QCOW2_E2E_CACHE).
func cacheDir(t *testing.T) string {
	if d := os.Getenv("CSI_QCOW2_E2E_CACHE"); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(home, ".cache", "csi-qcow2-e2e")
}
