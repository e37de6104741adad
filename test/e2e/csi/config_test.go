package csi

import (
	"os"
	"testing"

	snapclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// env is what the tests need to know of the cluster, from the environment
// with the chart's defaults.
type env struct {
	kube  kubernetes.Interface
	snap  snapclient.Interface
	rest  *rest.Config
	class string
	// snapshotClasses are the VolumeSnapshotClasses by snapshot type.
	snapshotClasses map[string]string
	// driverNamespace holds the chart's node DaemonSet (csi-qcow2-node).
	driverNamespace string
	// busybox is the image the test pods run (the e2e suite's own).
	busybox string
	// listen is an address of this machine that the nodes reach, where
	// the golden-image test serves its image ("": that test skips).
	listen string
}

func getenv(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// setup returns the cluster's env, or skips the test saying how to run it.
func setup(t *testing.T) *env {
	t.Helper()
	kc := os.Getenv("KUBECONFIG")
	if kc == "" {
		t.Skip("set KUBECONFIG to a cluster with the csi-qcow2 chart installed (make e2e-cluster runs these tests in a local cluster; docs/e2e.md)")
	}
	rc, err := clientcmd.BuildConfigFromFlags("", kc)
	if err != nil {
		t.Fatal(err)
	}
	rc.QPS, rc.Burst = 50, 100
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := snapclient.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	return &env{
		kube: kube, snap: snap, rest: rc,
		class: getenv("CSI_QCOW2_E2E_STORAGECLASS", "csi-qcow2"),
		snapshotClasses: map[string]string{
			"external": getenv("CSI_QCOW2_E2E_SNAPSHOTCLASS_EXTERNAL", "csi-qcow2-external"),
			"internal": getenv("CSI_QCOW2_E2E_SNAPSHOTCLASS_INTERNAL", "csi-qcow2-internal"),
		},
		driverNamespace: getenv("CSI_QCOW2_E2E_DRIVER_NAMESPACE", "csi-qcow2"),
		busybox:         getenv("CSI_QCOW2_E2E_BUSYBOX", "registry.k8s.io/e2e-test-images/busybox:1.37.0-2"),
		listen:          os.Getenv("CSI_QCOW2_E2E_LISTEN"),
	}
}
