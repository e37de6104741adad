package csi

import (
	"crypto/md5"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"net"
	"net/http"
	"sync/atomic"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// A golden-image class: the node plugin downloads the image once (served
// here, on CSI_QCOW2_E2E_LISTEN), and each claim of the class starts with
// its bytes; a claim's writes do not reach the next claim.
func TestGoldenImageClass(t *testing.T) {
	e := setup(t)
	if e.listen == "" {
		t.Skip("set CSI_QCOW2_E2E_LISTEN to an address of this machine that the nodes reach (make e2e-cluster sets the local cluster's gateway)")
	}
	img := make([]byte, dataMiB<<20)
	if _, err := rand.Read(img); err != nil {
		t.Fatal(err)
	}
	md := md5.Sum(img)
	want := hex.EncodeToString(md[:])
	sha := sha256.Sum256(img)

	lis, err := net.Listen("tcp", e.listen)
	if err != nil {
		t.Fatal(err)
	}
	var gets atomic.Int64
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/golden.img" {
			http.NotFound(w, r)
			return
		}
		gets.Add(1)
		w.Write(img)
	})}
	go srv.Serve(lis)
	t.Cleanup(func() { srv.Close() })

	n := e.newNamespace(t)
	class := n.newClass("golden", map[string]string{
		"imageURL":    "http://" + lis.Addr().String() + "/golden.img",
		"imageSHA256": hex.EncodeToString(sha[:]),
	})
	n.createClaim(claim{name: "first", size: "64Mi", block: true, class: class})
	if got := n.readData("reader1", "first", true); got != want {
		t.Fatalf("the first claim reads %s, the image is %s", got, want)
	}
	n.writeData("writer", "first", true)
	n.createClaim(claim{name: "second", size: "64Mi", block: true, class: class})
	if got := n.readData("reader2", "second", true); got != want {
		t.Fatalf("the second claim reads %s, the image is %s", got, want)
	}
	// Each node imports the image once, whatever its claims.
	nodes, err := n.kube.CoreV1().Nodes().List(n.ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if g := gets.Load(); g < 1 || g > int64(len(nodes.Items)) {
		t.Errorf("the image was fetched %d times by %d nodes", g, len(nodes.Items))
	}
}
