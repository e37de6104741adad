package cluster

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// deletePods takes the workloads down in two rounds. First every namespace
// but the chart's: their controllers, then their pods, and a wait until the
// kubelet has unmounted their volumes, which it does through the CSI plugin
// (still running). Then the chart's namespaces and the rest; it waits
// (briefly) until containerd runs no task, so that the kubelet tears down
// the sandboxes itself.
func (c *Cluster) deletePods(ctx context.Context) {
	nss, err := c.Client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		c.logf("teardown: listing namespaces: %v", err)
		return
	}
	var first, last []string
	for _, ns := range nss.Items {
		if c.lastNamespaces[ns.Name] {
			last = append(last, ns.Name)
		} else {
			first = append(first, ns.Name)
		}
	}
	if len(last) > 0 {
		one := int64(1)
		c.deleteWorkloads(ctx, first, &one)
		if err := c.poll(ctx, "workload pods gone and their volumes unmounted", 90*time.Second, func() (bool, error) {
			for _, ns := range first {
				pods, err := c.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
				if err != nil {
					return false, err
				}
				if len(pods.Items) > 0 {
					return false, fmt.Errorf("%d pods left in %s", len(pods.Items), ns)
				}
			}
			if mps := c.volumeMounts(); len(mps) > 0 {
				return false, fmt.Errorf("volume mounts left: %v", mps)
			}
			return true, nil
		}); err != nil {
			c.logf("teardown: %v", err)
		}
	}
	zero := int64(0)
	c.deleteWorkloads(ctx, append(first, last...), &zero)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if len(c.ctr(ctx, "tasks", "ls", "-q")) == 0 {
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
	c.logf("teardown: containerd still runs tasks 30 s after the pods were deleted")
}

// deleteWorkloads deletes the pod controllers of the namespaces (so that
// they make no new pods), then their pods.
func (c *Cluster) deleteWorkloads(ctx context.Context, namespaces []string, grace *int64) {
	bg := metav1.DeletePropagationBackground
	opts := metav1.DeleteOptions{PropagationPolicy: &bg}
	all := metav1.ListOptions{}
	apps, batch := c.Client.AppsV1(), c.Client.BatchV1()
	for _, ns := range namespaces {
		for what, del := range map[string]func() error{
			"daemonsets":   func() error { return apps.DaemonSets(ns).DeleteCollection(ctx, opts, all) },
			"deployments":  func() error { return apps.Deployments(ns).DeleteCollection(ctx, opts, all) },
			"statefulsets": func() error { return apps.StatefulSets(ns).DeleteCollection(ctx, opts, all) },
			"replicasets":  func() error { return apps.ReplicaSets(ns).DeleteCollection(ctx, opts, all) },
			"jobs":         func() error { return batch.Jobs(ns).DeleteCollection(ctx, opts, all) },
		} {
			if err := del(); err != nil {
				c.logf("teardown: deleting %s in %s: %v", what, ns, err)
			}
		}
		if err := c.Client.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: grace}, all); err != nil {
			c.logf("teardown: deleting pods in %s: %v", ns, err)
		}
	}
}

// volumeMounts lists the mounts of CSI volumes under the kubelet's root:
// published (pods/UID/volumes/kubernetes.io~csi/...) and staged
// (plugins/kubernetes.io/csi/...).
func (c *Cluster) volumeMounts() []string {
	var out []string
	for _, mp := range c.Mounts() {
		rel := strings.TrimPrefix(strings.TrimPrefix(mp, c.path("kubelet")+"/"), KubeletDir+"/")
		if strings.Contains(rel, "/volumes/kubernetes.io~csi/") || strings.HasPrefix(rel, "plugins/kubernetes.io/csi/") {
			out = append(out, mp)
		}
	}
	return out
}

// LoopDevices lists the loop devices whose backing file is under the root
// (the driver's FUSE attach path makes them).
func (c *Cluster) LoopDevices() []string {
	var devs []string
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err == nil && strings.HasPrefix(strings.TrimSpace(string(b)), c.Root+"/") {
			devs = append(devs, "/dev/"+filepath.Base(filepath.Dir(filepath.Dir(f))))
		}
	}
	return devs
}

func (c *Cluster) sweepLoopDevices() []error {
	var errs []error
	for _, dev := range c.LoopDevices() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("losetup -d %s: %v: %s", dev, err, out))
		}
	}
	return errs
}
