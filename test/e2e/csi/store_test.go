package csi

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// storeFiles lists the files of the node's store from a pod that mounts
// it read-only.
func (n *ns) storeFiles(name, node string) []string {
	n.t.Helper()
	host := n.storeHostPath()
	out := n.runHostPathPod(name, node, host, "find /store -type f | sort")
	var files []string
	for _, l := range strings.Split(out, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			files = append(files, strings.TrimPrefix(l, "/store/"))
		}
	}
	return files
}

// Deleting the claims, the snapshot and the restore leaves no file of
// theirs in the store: the set of files after is within the set before
// (images stay: a cache by design), and no path names a deleted volume.
func TestDeletionLeavesNothingInTheStore(t *testing.T) {
	e := setup(t)
	n := e.newNamespace(t)
	n.createClaim(claim{name: "src", size: "64Mi"})
	_, node := n.runPodOn(pod{name: "placer", claim: "src", script: "true"})
	before := n.storeFiles("lister-before", node)
	if !recorded(before, n.volumeHandle("src")) {
		t.Fatalf("the store on %s lists no record of the volume: %v", node, before)
	}
	n.writeData("writer", "src", false)
	vs := n.snapshot("snap", "src", "external")
	n.createClaim(claim{name: "restored", size: "64Mi", from: "snap"})
	n.readData("reader", "restored", false)
	pvs := []string{n.claimOf("src").Spec.VolumeName, n.claimOf("restored").Spec.VolumeName}
	ids := []string{n.volumeHandle("src"), n.volumeHandle("restored")}
	content := *vs.Status.BoundVolumeSnapshotContentName

	ctx := context.Background()
	for _, c := range []string{"restored", "src"} {
		if err := n.kube.CoreV1().PersistentVolumeClaims(n.name).Delete(ctx, c, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.snap.SnapshotV1().VolumeSnapshots(n.name).Delete(ctx, "snap", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	n.waitFor("the volumes and the snapshot content deleted", 5*time.Minute, func() (bool, error) {
		for _, pv := range pvs {
			if _, err := n.kube.CoreV1().PersistentVolumes().Get(ctx, pv, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				return false, fmt.Errorf("PV %s: %v", pv, err)
			}
		}
		_, err := n.snap.SnapshotV1().VolumeSnapshotContents().Get(ctx, content, metav1.GetOptions{})
		return apierrors.IsNotFound(err), fmt.Errorf("content %s: %v", content, err)
	})
	after := n.storeFiles("lister-after", node)
	had := map[string]bool{}
	for _, f := range before {
		had[f] = true
	}
	for _, f := range after {
		if !had[f] && !strings.HasPrefix(f, "images/") {
			t.Errorf("left in the store: %s", f)
		}
		for _, id := range ids {
			if strings.Contains(f, id) {
				t.Errorf("left in the store: %s names deleted volume %s", f, id)
			}
		}
	}
	t.Logf("store on %s: %d files before, %d after", node, len(before), len(after))
}

// recorded says whether the store's files hold the volume's record.
func recorded(files []string, id string) bool {
	for _, f := range files {
		if strings.HasPrefix(f, "volumes/") && strings.Contains(f, id) {
			return true
		}
	}
	return false
}
