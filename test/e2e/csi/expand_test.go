package csi

import (
	"fmt"
	"os"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// A claim grown while its pod runs: the pod sees the bigger filesystem or
// device without restarting. ext4 grows online only where the node plugin
// has CAP_SYS_RESOURCE; CSI_QCOW2_E2E_EXT4_ONLINE_GROW=0 says the nodes'
// plugin lacks it (the local cluster in this sandbox) and leaves ext4 out.
func TestOnlineExpansion(t *testing.T) {
	e := setup(t)
	cases := []struct {
		name, fsType string
		block        bool
	}{{"xfs", "xfs", false}, {"ext4", "ext4", false}, {"block", "", true}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.fsType == "ext4" && os.Getenv("CSI_QCOW2_E2E_EXT4_ONLINE_GROW") == "0" {
				t.Skip("CSI_QCOW2_E2E_EXT4_ONLINE_GROW=0: the node plugin cannot grow ext4 online here (no CAP_SYS_RESOURCE)")
			}
			t.Parallel()
			n := e.newNamespace(t)
			class := ""
			if tc.fsType != "" {
				class = n.fsTypeClass(tc.fsType)
			}
			// 512Mi: mkfs.xfs refuses less than 300 MB.
			n.createClaim(claim{name: "vol", size: "512Mi", block: tc.block, class: class})
			// The pod waits until it sees at least 900 MiB, then exits.
			size := "$(df -k /data | awk 'NR==2 {print $2}')"
			if tc.block {
				size = "$(($(blockdev --getsize64 " + blockDevice + ") / 1024))"
			}
			n.startPod(pod{name: "user", claim: "vol", block: tc.block, script: fmt.Sprintf(
				"echo before %s; while [ %s -lt %d ]; do sleep 1; done; echo after %s", size, size, 900*1024, size)})
			n.waitRunning("user")
			patch := []byte(`{"spec":{"resources":{"requests":{"storage":"1Gi"}}}}`)
			if _, err := n.kube.CoreV1().PersistentVolumeClaims(n.name).Patch(n.ctx, "vol", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
				t.Fatal(err)
			}
			want := resource.MustParse("1Gi")
			n.waitFor("the claim's capacity 1Gi", 5*time.Minute, func() (bool, error) {
				c := n.claimOf("vol")
				got := c.Status.Capacity[corev1.ResourceStorage]
				return got.Cmp(want) >= 0, fmt.Errorf("capacity %s, conditions %v", got.String(), c.Status.Conditions)
			})
			n.waitFor("the running pod sees the grown volume", 5*time.Minute, func() (bool, error) {
				got, err := n.kube.CoreV1().Pods(n.name).Get(n.ctx, "user", metav1.GetOptions{})
				if err != nil {
					return false, err
				}
				if got.Status.Phase == corev1.PodFailed {
					t.Fatalf("pod failed: %s", n.logs("user"))
				}
				return got.Status.Phase == corev1.PodSucceeded, fmt.Errorf("phase %s", got.Status.Phase)
			})
			t.Log(n.logs("user"))
		})
	}
}
