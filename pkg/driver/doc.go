// Package driver is csi-qcow2's CSI plugin: the Identity, Controller and
// Node services over the node-local store (pkg/driver/store), served on a
// unix socket by `csi-qcow2 driver`; volumes are attached through
// pkg/nbdattach/fuseloop.
//
// It is the only package that knows CSI: it validates requests, maps
// them onto the store, and maps the store's errors onto the gRPC codes
// the CSI spec names (errors.go). Every node runs one driver for the
// volumes on its own disk (DESIGN.md, "Distributed deployment").
//
// It composes pkg/qcow2 and pkg/driver/golden through the store, and
// pkg/nbdattach through internal/qcow2nbd; it must not reach into layer
// files itself.
package driver
