package csi

import (
	"fmt"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// capacityTopologyKey is the driver's topology key, which the provisioner
// (--enable-capacity, per node) puts in each CSIStorageCapacity's
// nodeTopology.
const capacityTopologyKey = "topology.csi-qcow2.io/node"

// capacity is the class's published CSIStorageCapacity for the node.
func (n *ns) capacity(node string) (*resource.Quantity, error) {
	list, err := n.kube.StorageV1().CSIStorageCapacities(n.driverNamespace).List(n.ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	for _, c := range list.Items {
		if c.StorageClassName == n.class && c.NodeTopology != nil && c.NodeTopology.MatchLabels[capacityTopologyKey] == node && c.Capacity != nil {
			return c.Capacity, nil
		}
	}
	return nil, fmt.Errorf("no CSIStorageCapacity for class %s on node %s among %d", n.class, node, len(list.Items))
}

// The published capacity follows the volumes: a new 2 GiB claim takes at
// least 1 GiB off its node's figure (the promise is its size; the rest is
// room for the disk's other users), and its deletion gives it back. Writes
// into a volume do not move it at overcommit 1: the volume's size was
// already subtracted when it was made (docs/operations.md, "Capacity").
// The provisioner polls every minute by default.
func TestCapacityFollowsVolumes(t *testing.T) {
	e := setup(t)
	n := e.newNamespace(t)
	n.createClaim(claim{name: "placer", size: "64Mi"})
	_, node := n.runPodOn(pod{name: "placer", claim: "placer", script: "true"})
	var before *resource.Quantity
	n.waitFor("the node's published capacity", 3*time.Minute, func() (bool, error) {
		q, err := n.capacity(node)
		before = q
		return err == nil, err
	})
	t.Logf("capacity on %s: %s", node, before)

	n.createClaim(claim{name: "big", size: "2Gi"})
	n.runPod(pod{name: "big-user", claim: "big", node: node, script: "true"})
	drop := resource.MustParse("1Gi")
	n.waitFor("the capacity down by 1Gi or more", 4*time.Minute, func() (bool, error) {
		q, err := n.capacity(node)
		if err != nil {
			return false, err
		}
		d := before.DeepCopy()
		d.Sub(*q)
		return d.Cmp(drop) >= 0, fmt.Errorf("capacity %s (was %s)", q, before)
	})
	if err := n.kube.CoreV1().PersistentVolumeClaims(n.name).Delete(n.ctx, "big", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	n.waitFor("the capacity back within 1Gi of its first figure", 4*time.Minute, func() (bool, error) {
		q, err := n.capacity(node)
		if err != nil {
			return false, err
		}
		d := before.DeepCopy()
		d.Sub(*q)
		return d.Cmp(drop) < 0, fmt.Errorf("capacity %s (was %s)", q, before)
	})
}
