package csi

import (
	"context"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// A restore holds the data of the snapshot's moment, not what the source
// held later, for both snapshot types and both access types.
func TestSnapshotRestore(t *testing.T) {
	e := setup(t)
	for _, typ := range []string{"external", "internal"} {
		for _, block := range []bool{false, true} {
			name := typ + "-" + map[bool]string{false: "filesystem", true: "block"}[block]
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				n := e.newNamespace(t)
				n.createClaim(claim{name: "src", size: "64Mi", block: block})
				want := n.writeData("writer", "src", block)
				n.snapshot("snap", "src", typ)
				if after := n.writeData("overwriter", "src", block); after == want {
					t.Fatal("the second write wrote the same bytes")
				}
				n.createClaim(claim{name: "restored", size: "64Mi", block: block, from: "snap"})
				if got := n.readData("reader", "restored", block); got != want {
					t.Fatalf("the restore reads %s, the snapshot was taken of %s", got, want)
				}
			})
		}
	}
}

// An external snapshot outlives its source: the claim is deleted (and its
// volume with it), and the snapshot still restores.
func TestSnapshotOutlivesItsSource(t *testing.T) {
	e := setup(t)
	n := e.newNamespace(t)
	src := n.createClaim(claim{name: "src", size: "64Mi"})
	want := n.writeData("writer", "src", false)
	n.snapshot("snap", "src", "external")
	pv := n.claimOf(src.Name).Spec.VolumeName
	if err := n.kube.CoreV1().PersistentVolumeClaims(n.name).Delete(n.ctx, "src", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	n.waitFor("the source's volume deleted", 3*time.Minute, func() (bool, error) {
		_, err := n.kube.CoreV1().PersistentVolumes().Get(context.Background(), pv, metav1.GetOptions{})
		return apierrors.IsNotFound(err), err
	})
	n.createClaim(claim{name: "restored", size: "64Mi", from: "snap"})
	if got := n.readData("reader", "restored", false); got != want {
		t.Fatalf("the restore reads %s, the snapshot was taken of %s", got, want)
	}
}

// A clone holds the source's data at the moment it was made; the source
// changing afterwards does not reach it.
func TestClone(t *testing.T) {
	e := setup(t)
	n := e.newNamespace(t)
	n.createClaim(claim{name: "src", size: "64Mi"})
	want := n.writeData("writer", "src", false)
	n.createClaim(claim{name: "clone", size: "64Mi", from: "src", fromClaim: true})
	// Bound before the source changes: the clone is made at binding.
	n.startPod(pod{name: "clone-user", claim: "clone", script: "true"})
	n.waitFor("the clone bound", 3*time.Minute, func() (bool, error) {
		return n.claimOf("clone").Spec.VolumeName != "", nil
	})
	n.deletePod("clone-user")
	n.writeData("overwriter", "src", false)
	if got := n.readData("reader", "clone", false); got != want {
		t.Fatalf("the clone reads %s, its source held %s", got, want)
	}
}
