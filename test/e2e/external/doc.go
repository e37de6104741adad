// Package external runs the Kubernetes external storage suite (e2e.test
// from k8s.io/kubernetes, built by test/e2e/cluster/build-e2e-test.sh)
// against csi-qcow2 with test/e2e/testdriver.yaml, and builds the test
// images its pods run, since the local cluster pulls nothing.
package external
