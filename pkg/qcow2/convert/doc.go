// Package convert copies the guest-visible content of a disk into another
// disk: a raw file or a qcow2 image read through its whole backing chain
// (or one of its internal snapshots) into a new qcow2 or raw target, or
// into an existing one. It is what `csi-qcow2 img convert` runs and what
// the driver imports golden images with.
//
// It owns the copy itself: cutting the source's map into requests, sparse
// output (ranges the source maps as zero and all-zero blocks of read data
// are not written), the worker pipeline (parallel reads, zero tests and
// compression; writes in guest order unless out-of-order writes are
// allowed), read-ahead hints for the source and write-behind hints for the
// target, compressed output, and the backing-aware copy onto an overlay.
// Opening and creating files, and the choices a user spells on a command
// line, are the caller's.
//
// It imports only pkg/qcow2: it must not import anything from CSI, NBD,
// Kubernetes or the CLI (cobra), so that every caller gets the same copy.
package convert
