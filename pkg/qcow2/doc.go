// Package qcow2 is csi-qcow2's embedded qcow2 engine: it owns the on-disk
// format (header, extensions, L1/L2 tables, refcounts, snapshots table),
// the metadata caches, cluster allocation, backing chains, crash-safe write
// ordering, and check/repair.
//
// It must not import anything from CSI, NBD or Kubernetes: the driver and the
// NBD server compose it from the outside. All file I/O goes through the File
// interface so that tests can record, reorder and replay it.
//
// docs/engine.md explains how the engine keeps DESIGN.md's crash safety rules.
package qcow2
