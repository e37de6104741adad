// Package driver is csi-qcow2's CSI plugin: the Identity and Controller
// services (and, next, the Node service) over the node-local store
// (pkg/driver/store), served on a unix socket by `csi-qcow2 driver`.
//
// It is the only package that knows CSI: it validates requests, maps
// them onto the store, and maps the store's errors onto the gRPC codes
// the CSI spec names (errors.go). Every node runs one driver for the
// volumes on its own disk (DESIGN.md, "Distributed deployment").
//
// It composes pkg/qcow2 and pkg/driver/golden through the store; it must
// not reach into layer files itself.
package driver
