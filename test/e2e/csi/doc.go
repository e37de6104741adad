// Package csi holds csi-qcow2's end-to-end tests against a cluster where
// the chart is installed: pods write and read filesystem and block
// volumes, snapshots of both types are restored, volumes are cloned and
// grown online, a golden-image class is served, capacity is published,
// the node plugin restarts under load, and deleted claims leave nothing
// in the store. They run against the cluster in KUBECONFIG (skipped when
// it is unset); make e2e-cluster runs them in the local cluster
// (test/e2e/cluster, docs/e2e.md). The package imports client-go and the
// snapshot client only: nothing of the driver's own code, which would let
// a test agree with the code it checks.
package csi
