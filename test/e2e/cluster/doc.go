// Package cluster brings up a real single-node Kubernetes cluster on this
// machine and tears it down again: etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler, containerd and the kubelet, all on
// loopback, with their state and logs under one temporary root.
//
// It needs root, the Debian packages and the Kubernetes binaries that
// build-k8s.sh installs and builds, and no container engine. Nothing here
// runs under a plain `go test ./...`: the smoke test is gated on
// CSI_QCOW2_E2E_CLUSTER=1 (make e2e-cluster). docs/e2e.md, "The local
// cluster", says what it costs.
package cluster
