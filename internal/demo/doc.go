// Package demo is `csi-qcow2 demo`: the driver started in-process on a
// temporary store and driven through the CSI API over its unix socket, as
// a container orchestrator drives it, through a volume's whole life (a
// golden image served over http on loopback, overlays, stage and publish
// as a filesystem and as a raw block device, snapshots of both types,
// restores, a clone, online expansion, teardown), with a table of what
// happened. It owns the temporary root and everything under it, and
// cleans all of it up, also when interrupted.
//
// It talks to the driver over CSI only: it must not import the store or
// the engine (pkg/driver/store, pkg/qcow2).
package demo
