package csi

import (
	"fmt"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// The chart's node DaemonSet and its driver container.
const (
	nodeDaemonSet   = "csi-qcow2-node"
	driverContainer = "csi-qcow2"
)

func (n *ns) nodeDaemonSet() *appsv1.DaemonSet {
	n.t.Helper()
	ds, err := n.kube.AppsV1().DaemonSets(n.driverNamespace).Get(n.ctx, nodeDaemonSet, metav1.GetOptions{})
	if err != nil {
		n.t.Fatalf("the node plugin's DaemonSet (CSI_QCOW2_E2E_DRIVER_NAMESPACE=%s): %v", n.driverNamespace, err)
	}
	return ds
}

// storeHostPath is the node plugin's --state-dir as a path on the node.
func (n *ns) storeHostPath() string {
	n.t.Helper()
	spec := n.nodeDaemonSet().Spec.Template.Spec
	var dir string
	for _, c := range spec.Containers {
		if c.Name != driverContainer {
			continue
		}
		for _, a := range c.Args {
			if v, ok := strings.CutPrefix(a, "--state-dir="); ok {
				dir = v
			}
		}
		for _, m := range c.VolumeMounts {
			if m.MountPath != dir {
				continue
			}
			for _, v := range spec.Volumes {
				if v.Name == m.Name && v.HostPath != nil {
					return v.HostPath.Path
				}
			}
		}
	}
	n.t.Fatalf("no hostPath holds the driver's --state-dir %q", dir)
	return ""
}

// driverPod is the node plugin's pod on the node.
func (n *ns) driverPod(node string) *corev1.Pod {
	n.t.Helper()
	ds := n.nodeDaemonSet()
	sel := labels.SelectorFromSet(ds.Spec.Selector.MatchLabels).String()
	var found *corev1.Pod
	n.waitFor("the node plugin's pod on "+node, 3*time.Minute, func() (bool, error) {
		pods, err := n.kube.CoreV1().Pods(n.driverNamespace).List(n.ctx, metav1.ListOptions{LabelSelector: sel, FieldSelector: "spec.nodeName=" + node})
		if err != nil {
			return false, err
		}
		for i := range pods.Items {
			p := &pods.Items[i]
			if p.DeletionTimestamp == nil && podReady(p) {
				found = p
				return true, nil
			}
		}
		return false, fmt.Errorf("%d pods, none ready", len(pods.Items))
	})
	return found
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// attachPath is the attach path the node plugin on the node chose, from
// its log ("attach path chosen").
func (n *ns) attachPath(p *corev1.Pod) string {
	n.t.Helper()
	b, err := n.kube.CoreV1().Pods(p.Namespace).GetLogs(p.Name, &corev1.PodLogOptions{Container: driverContainer}).DoRaw(n.ctx)
	if err != nil {
		n.t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.Contains(line, "attach path chosen") {
			continue
		}
		for _, path := range []string{"nbd", "fuse"} {
			if strings.Contains(line, `path="`+path+`"`) {
				return path
			}
		}
	}
	n.t.Fatalf("no \"attach path chosen\" line in %s's log", p.Name)
	return ""
}
