// Package store is the driver's node-local database of qcow2 layers: the
// volumes, snapshots and golden images a node holds, the layer files they
// are made of, and the crash-safe steps that change them (DESIGN.md,
// "Node-local store").
//
// Objects and files are separate. A volume is a chain
// image <- frozen layers ... <- top; a snapshot names the chain it reads.
// Deleting an object removes its record at once; a layer file goes only
// when no record names it any more (gc.go), so a snapshot outlives its
// source volume. Every record change is atomic (atomic.go), and an
// operation that changes a file writes its intent into a record first,
// so that Open can finish or undo whatever a crash interrupted
// (recover.go).
//
// The store knows qcow2 (pkg/qcow2) and golden images
// (pkg/driver/golden); it must not import CSI, gRPC, NBD or Kubernetes:
// the CSI services in pkg/driver map its errors to gRPC codes.
package store
