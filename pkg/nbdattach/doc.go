// Package nbdattach serves block devices over the NBD protocol and attaches
// them to the kernel's NBD driver.
//
// It owns the protocol server (fixed newstyle handshake, simple and
// structured replies, the base:allocation meta context, many requests in
// flight per connection, several connections per export), the kernel
// attach through the generic-netlink nbd family, and device discovery.
// What is served is any Backend: the package knows nothing of qcow2 and
// must not import pkg/qcow2, CSI or Kubernetes packages; callers adapt
// their disks to Backend from the outside.
//
// docs/nbd.md describes the protocol coverage, the concurrency model and
// the limits.
package nbdattach
