package cluster

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestSmoke starts the local cluster, runs a pod to completion from the
// tool image, tears down, and checks that nothing is left. It runs only with
// CSI_QCOW2_E2E_CLUSTER=1 (make e2e-cluster), as root, after build-k8s.sh;
// CSI_QCOW2_E2E_BIN names the binary directory (default: build-k8s.sh's).
func TestSmoke(t *testing.T) {
	if os.Getenv("CSI_QCOW2_E2E_CLUSTER") != "1" {
		t.Skip("set CSI_QCOW2_E2E_CLUSTER=1 to start a local Kubernetes cluster (make e2e-cluster)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	binDir := binDir(ctx, t)
	image, err := BuildToolImage(ctx, goCommand(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	c, err := Start(ctx, Config{BinDir: binDir, Images: []string{image}, Log: testWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cluster up in %.1f s", time.Since(start).Seconds())
	stopped := false
	defer func() {
		if !stopped {
			keepLogs(t, c)
			c.Stop()
		}
	}()

	runPod(ctx, t, c, "smoke", false, []string{"echo", "hello from csi-qcow2-e2e"}, "hello from csi-qcow2-e2e")
	// In-cluster clients (the CSI sidecars) reach the apiserver through the
	// kubernetes Service, routed by kube-proxy.
	runPod(ctx, t, c, "api", true, []string{"api"}, "apiserver v1.")
	// A pod still running at teardown: Stop must take it down too.
	runLongPod(ctx, t, c)

	pids := c.PIDs()
	start = time.Now()
	if t.Failed() {
		keepLogs(t, c)
	}
	stopped = true
	if err := c.Stop(); err != nil {
		t.Fatalf("teardown: %v", err)
	}
	t.Logf("torn down in %.1f s", time.Since(start).Seconds())

	checkNothingLeft(t, c, pids)
}

// checkNothingLeft checks, after Stop, that the cluster left no process,
// mount, loop device, bridge, network namespace, cgroup, nftables table,
// host directory or root.
func checkNothingLeft(t *testing.T, c *Cluster, pids map[string]int) {
	t.Helper()
	root := c.Root
	for name, pid := range pids {
		if err := syscall.Kill(pid, 0); err == nil {
			t.Errorf("%s (pid %d) still runs", name, pid)
		}
	}
	if pids := c.Leftovers(); len(pids) > 0 {
		t.Errorf("processes left: %v", pids)
	}
	if mps := c.Mounts(); len(mps) > 0 {
		t.Errorf("mounts left: %v", mps)
	}
	if devs := c.LoopDevices(); len(devs) > 0 {
		t.Errorf("loop devices left: %v", devs)
	}
	if exists("/sys/class/net/" + c.Bridge) {
		t.Errorf("bridge %s left", c.Bridge)
	}
	if ns := c.NewNetns(); len(ns) > 0 {
		t.Errorf("network namespaces left: %v", ns)
	}
	if dirs := c.cgroupDirs(); len(dirs) > 0 {
		t.Errorf("cgroups left: %v", dirs)
	}
	for _, d := range c.hostDirs {
		if exists(d) {
			t.Errorf("host directory %s left", d)
		}
	}
	if exists(root) {
		t.Errorf("root %s left", root)
	}
	if left := anyClusterLeft(); len(left) > 0 {
		t.Errorf("left: %v", left)
	}
}

// binDir is CSI_QCOW2_E2E_BIN or the directory build-k8s.sh prints.
func binDir(ctx context.Context, t *testing.T) string {
	if d := os.Getenv("CSI_QCOW2_E2E_BIN"); d != "" {
		return d
	}
	out, err := exec.CommandContext(ctx, "./build-k8s.sh").Output()
	if err != nil {
		t.Fatalf("build-k8s.sh: %v", err)
	}
	lines := strings.Fields(string(out))
	if len(lines) == 0 {
		t.Fatal("build-k8s.sh printed nothing")
	}
	return lines[len(lines)-1]
}

func goCommand() string {
	if g := os.Getenv("GO"); g != "" {
		return g
	}
	return "go"
}

// runPod runs e2etool with args in a pod named name and checks that it
// succeeds and that its output starts with want.
func runPod(ctx context.Context, t *testing.T, c *Cluster, name string, token bool, args []string, want string) {
	t.Helper()
	// The ServiceAccount admission plugin wants the default service account.
	if err := c.poll(ctx, "default service account", time.Minute, func() (bool, error) {
		_, err := c.Client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err == nil, err
	}); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			RestartPolicy:                corev1.RestartPolicyNever,
			AutomountServiceAccountToken: &token,
			Containers: []corev1.Container{{
				Name:            "tool",
				Image:           ToolImage,
				ImagePullPolicy: corev1.PullNever,
				Args:            args,
			}},
		},
	}
	start := time.Now()
	if _, err := c.Client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var phase corev1.PodPhase
	err := c.poll(ctx, "pod "+name+" ended", 2*time.Minute, func() (bool, error) {
		p, err := c.Client.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		phase = p.Status.Phase
		return phase == corev1.PodSucceeded || phase == corev1.PodFailed, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	logs, err := c.Client.CoreV1().Pods("default").GetLogs(name, &corev1.PodLogOptions{}).DoRaw(ctx)
	if err != nil {
		t.Errorf("pod %s logs: %v", name, err)
	}
	if phase != corev1.PodSucceeded {
		t.Fatalf("pod %s ended %s: %s", name, phase, logs)
	}
	t.Logf("pod %s Succeeded %.1f s after creation", name, time.Since(start).Seconds())
	if got := strings.TrimSpace(string(logs)); !strings.HasPrefix(got, want) {
		t.Errorf("pod %s logs %q, want %q...", name, got, want)
	}
}

// runLongPod starts a pod that runs until killed and waits until it runs.
func runLongPod(ctx context.Context, t *testing.T, c *Cluster) {
	t.Helper()
	no := false
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "sleeper"},
		Spec: corev1.PodSpec{
			AutomountServiceAccountToken: &no,
			Containers: []corev1.Container{{
				Name:            "pause",
				Image:           ToolImage,
				ImagePullPolicy: corev1.PullNever,
			}},
		},
	}
	if _, err := c.Client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.poll(ctx, "pod sleeper Running", 2*time.Minute, func() (bool, error) {
		p, err := c.Client.CoreV1().Pods("default").Get(ctx, "sleeper", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return p.Status.Phase == corev1.PodRunning, nil
	}); err != nil {
		t.Fatal(err)
	}
}

// keepLogs copies the components' logs out of the root (which Stop removes)
// into CSI_QCOW2_E2E_LOGS or a directory under the test's temp dir's parent.
func keepLogs(t *testing.T, c *Cluster) {
	dst := os.Getenv("CSI_QCOW2_E2E_LOGS")
	if dst == "" {
		var err error
		if dst, err = os.MkdirTemp("", "csi-qcow2-e2e-logs-"); err != nil {
			t.Log(err)
			return
		}
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Log(err)
		return
	}
	if out, err := exec.Command("cp", "-r", c.path("logs")+"/.", dst).CombinedOutput(); err != nil {
		t.Logf("copying logs: %v: %s", err, out)
		return
	}
	t.Logf("component logs kept in %s", dst)
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}
