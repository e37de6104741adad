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
// One Server can serve every export of a process, and keeps them apart:
// each connection has a bounded in-flight budget (Options.MaxInFlightBytes,
// MaxInFlightRequests), each export at most Options.MaxConnsPerExport
// connections and the server at most Options.MaxConns. A panic while
// serving a request fences only its export (its requests get EIO from then
// on; Server.Fenced reports it). Server.CloseExport removes one export:
// it closes that export's connections and returns once none of its
// requests runs any more, so that the caller may close the backend.
//
// docs/nbd.md describes the protocol coverage, the concurrency model and
// the limits.
package nbdattach
