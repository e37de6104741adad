package csi

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ns is one test's namespace; everything a test makes lives in it, and
// the test's cleanup deletes it and waits until its volumes are gone.
type ns struct {
	*env
	t    *testing.T
	ctx  context.Context
	name string
}

// newNamespace makes a namespace for the test. Its cleanup deletes the
// claims first and waits for their PersistentVolumes to go (the driver
// deletes the volumes), then the namespace.
func (e *env) newNamespace(t *testing.T) *ns {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	t.Cleanup(cancel)
	name := "csi-qcow2-e2e-" + strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	if len(name) > 63 {
		name = name[:63]
	}
	name = strings.TrimRight(name, "-")
	obj := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if _, err := e.kube.CoreV1().Namespaces().Create(ctx, obj, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	n := &ns{env: e, t: t, ctx: ctx, name: name}
	t.Cleanup(n.delete)
	// The ServiceAccount admission plugin wants the default account.
	n.waitFor("the default service account", time.Minute, func() (bool, error) {
		_, err := e.kube.CoreV1().ServiceAccounts(name).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, err
	})
	return n
}

func (n *ns) delete() {
	ctx := context.Background()
	pvs := map[string]bool{}
	if claims, err := n.kube.CoreV1().PersistentVolumeClaims(n.name).List(ctx, metav1.ListOptions{}); err == nil {
		for _, c := range claims.Items {
			if c.Spec.VolumeName != "" {
				pvs[c.Spec.VolumeName] = true
			}
		}
	}
	zero := int64(0)
	_ = n.kube.CoreV1().Pods(n.name).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &zero}, metav1.ListOptions{})
	_ = n.snap.SnapshotV1().VolumeSnapshots(n.name).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
	_ = n.kube.CoreV1().PersistentVolumeClaims(n.name).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
	n.waitFor("the test's volumes deleted", 5*time.Minute, func() (bool, error) {
		for pv := range pvs {
			if _, err := n.kube.CoreV1().PersistentVolumes().Get(ctx, pv, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				return false, fmt.Errorf("PersistentVolume %s still exists (%v)", pv, err)
			}
		}
		return true, nil
	})
	if err := n.kube.CoreV1().Namespaces().Delete(ctx, n.name, metav1.DeleteOptions{}); err != nil {
		n.t.Errorf("delete namespace %s: %v", n.name, err)
	}
}

// waitFor polls f every half second until it holds, failing the test after
// timeout with f's last error.
func (n *ns) waitFor(what string, timeout time.Duration, f func() (bool, error)) {
	n.t.Helper()
	start := time.Now()
	var last error
	for {
		ok, err := f()
		if ok {
			n.t.Logf("%s after %.1f s", what, time.Since(start).Seconds())
			return
		}
		last = err
		if time.Since(start) > timeout {
			n.t.Fatalf("timed out after %v waiting for %s (last: %v)", timeout, what, last)
		}
		select {
		case <-n.ctx.Done():
			n.t.Fatalf("waiting for %s: %v (last: %v)", what, n.ctx.Err(), last)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// claim describes a PersistentVolumeClaim to make.
type claim struct {
	name  string
	size  string
	block bool
	class string
	// from is a VolumeSnapshot or (with fromClaim) a claim to copy.
	from      string
	fromClaim bool
}

func (n *ns) createClaim(c claim) *corev1.PersistentVolumeClaim {
	n.t.Helper()
	mode := corev1.PersistentVolumeFilesystem
	if c.block {
		mode = corev1.PersistentVolumeBlock
	}
	if c.class == "" {
		c.class = n.class
	}
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: c.name},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: &c.class,
			VolumeMode:       &mode,
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(c.size)}},
		},
	}
	switch {
	case c.from != "" && c.fromClaim:
		pvc.Spec.DataSource = &corev1.TypedLocalObjectReference{Kind: "PersistentVolumeClaim", Name: c.from}
	case c.from != "":
		group := snapv1.GroupName
		pvc.Spec.DataSource = &corev1.TypedLocalObjectReference{APIGroup: &group, Kind: "VolumeSnapshot", Name: c.from}
	}
	out, err := n.kube.CoreV1().PersistentVolumeClaims(n.name).Create(n.ctx, pvc, metav1.CreateOptions{})
	if err != nil {
		n.t.Fatal(err)
	}
	return out
}

// pod describes a busybox pod that runs script with the claim at /data
// (filesystem) or /dev/e2e (block).
type pod struct {
	name, claim, script string
	block               bool
	// node pins the pod to a node (a snapshot's restore must run where
	// the snapshot is; the scheduler sees to it, this only checks).
	node string
	// keep: the pod runs until deleted (restartPolicy Never either way).
	keep bool
}

const blockDevice = "/dev/e2e"

func (n *ns) startPod(p pod) {
	n.t.Helper()
	zero := int64(0)
	c := corev1.Container{
		Name:            "main",
		Image:           n.busybox,
		ImagePullPolicy: corev1.PullIfNotPresent,
		Command:         []string{"/bin/sh", "-c", "set -e; " + p.script},
	}
	if p.block {
		c.VolumeDevices = []corev1.VolumeDevice{{Name: "vol", DevicePath: blockDevice}}
	} else {
		c.VolumeMounts = []corev1.VolumeMount{{Name: "vol", MountPath: "/data"}}
	}
	obj := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.name},
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			TerminationGracePeriodSeconds: &zero,
			Containers:                    []corev1.Container{c},
			Volumes: []corev1.Volume{{Name: "vol", VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: p.claim},
			}}},
		},
	}
	if p.node != "" {
		obj.Spec.NodeSelector = map[string]string{"kubernetes.io/hostname": p.node}
	}
	if _, err := n.kube.CoreV1().Pods(n.name).Create(n.ctx, obj, metav1.CreateOptions{}); err != nil {
		n.t.Fatal(err)
	}
}

// runPod runs the pod to completion and returns its output; a failed pod
// fails the test.
func (n *ns) runPod(p pod) string {
	n.t.Helper()
	out, _ := n.runPodOn(p)
	return out
}

// runPodOn is runPod that also says which node the pod ran on.
func (n *ns) runPodOn(p pod) (out, node string) {
	n.t.Helper()
	n.startPod(p)
	return n.finish(p.name)
}

// finish waits for a started pod to end, deletes it, and returns its
// output and node; a failed pod fails the test.
func (n *ns) finish(name string) (out, node string) {
	n.t.Helper()
	var phase corev1.PodPhase
	n.waitFor("pod "+name+" done", 5*time.Minute, func() (bool, error) {
		got, err := n.kube.CoreV1().Pods(n.name).Get(n.ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		phase, node = got.Status.Phase, got.Spec.NodeName
		return phase == corev1.PodSucceeded || phase == corev1.PodFailed, fmt.Errorf("phase %s", phase)
	})
	out = n.logs(name)
	if phase != corev1.PodSucceeded {
		n.t.Fatalf("pod %s failed: %s", name, out)
	}
	n.deletePod(name)
	return out, node
}

// runHostPathPod runs script in a busybox pod on the node with the node's
// directory dir mounted read-only at /store, and returns its output.
func (n *ns) runHostPathPod(name, node, dir, script string) string {
	n.t.Helper()
	zero := int64(0)
	obj := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			NodeName:                      node,
			RestartPolicy:                 corev1.RestartPolicyNever,
			TerminationGracePeriodSeconds: &zero,
			Containers: []corev1.Container{{
				Name: "main", Image: n.busybox, ImagePullPolicy: corev1.PullIfNotPresent,
				Command:      []string{"/bin/sh", "-c", "set -e; " + script},
				VolumeMounts: []corev1.VolumeMount{{Name: "store", MountPath: "/store", ReadOnly: true}},
			}},
			Volumes: []corev1.Volume{{Name: "store", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: dir}}}},
		},
	}
	if _, err := n.kube.CoreV1().Pods(n.name).Create(n.ctx, obj, metav1.CreateOptions{}); err != nil {
		n.t.Fatal(err)
	}
	out, _ := n.finish(name)
	return out
}

func (n *ns) logs(pod string) string {
	n.t.Helper()
	b, err := n.kube.CoreV1().Pods(n.name).GetLogs(pod, &corev1.PodLogOptions{}).DoRaw(n.ctx)
	if err != nil {
		n.t.Fatalf("logs of %s: %v", pod, err)
	}
	return strings.TrimSpace(string(b))
}

// deletePod deletes a pod and waits until it is gone (its volume then is
// unpublished: the next pod may stage it again).
func (n *ns) deletePod(name string) {
	n.t.Helper()
	zero := int64(0)
	if err := n.kube.CoreV1().Pods(n.name).Delete(n.ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil && !apierrors.IsNotFound(err) {
		n.t.Fatal(err)
	}
	n.waitFor("pod "+name+" gone", 3*time.Minute, func() (bool, error) {
		_, err := n.kube.CoreV1().Pods(n.name).Get(n.ctx, name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), err
	})
}

// waitRunning waits until the pod runs and returns its node.
func (n *ns) waitRunning(name string) string {
	n.t.Helper()
	var node string
	n.waitFor("pod "+name+" running", 5*time.Minute, func() (bool, error) {
		got, err := n.kube.CoreV1().Pods(n.name).Get(n.ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		if got.Status.Phase == corev1.PodFailed || got.Status.Phase == corev1.PodSucceeded {
			n.t.Fatalf("pod %s ended %s: %s", name, got.Status.Phase, n.logs(name))
		}
		node = got.Spec.NodeName
		return got.Status.Phase == corev1.PodRunning, fmt.Errorf("phase %s", got.Status.Phase)
	})
	return node
}

func (n *ns) claimOf(name string) *corev1.PersistentVolumeClaim {
	n.t.Helper()
	c, err := n.kube.CoreV1().PersistentVolumeClaims(n.name).Get(n.ctx, name, metav1.GetOptions{})
	if err != nil {
		n.t.Fatal(err)
	}
	return c
}

// volumeHandle is the CSI volume ID of a bound claim's volume.
func (n *ns) volumeHandle(claimName string) string {
	n.t.Helper()
	pv, err := n.kube.CoreV1().PersistentVolumes().Get(n.ctx, n.claimOf(claimName).Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		n.t.Fatal(err)
	}
	if pv.Spec.CSI == nil {
		n.t.Fatalf("volume %s is not a CSI volume", pv.Name)
	}
	return pv.Spec.CSI.VolumeHandle
}

// snapshot takes a VolumeSnapshot of a claim with the class of the given
// type and waits until it is ready to use.
func (n *ns) snapshot(name, claimName, typ string) *snapv1.VolumeSnapshot {
	n.t.Helper()
	class := n.snapshotClasses[typ]
	vs := &snapv1.VolumeSnapshot{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: snapv1.VolumeSnapshotSpec{
			Source:                  snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: &claimName},
			VolumeSnapshotClassName: &class,
		},
	}
	if _, err := n.snap.SnapshotV1().VolumeSnapshots(n.name).Create(n.ctx, vs, metav1.CreateOptions{}); err != nil {
		n.t.Fatal(err)
	}
	n.waitFor("snapshot "+name+" ready", 3*time.Minute, func() (bool, error) {
		got, err := n.snap.SnapshotV1().VolumeSnapshots(n.name).Get(n.ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		vs = got
		if st := got.Status; st != nil {
			if st.Error != nil && st.Error.Message != nil {
				return false, fmt.Errorf("%s", *st.Error.Message)
			}
			return st.ReadyToUse != nil && *st.ReadyToUse, fmt.Errorf("not ready")
		}
		return false, fmt.Errorf("no status")
	})
	return vs
}
