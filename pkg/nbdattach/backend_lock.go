package nbdattach

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// Whether a device's server is alive cannot be read from what the kernel
// records. The pid in /sys/block/nbdX/pid is the thread that sent CONNECT
// (task_pid_nr(current) in nbd_start_device: a thread id, not the process
// id, for a Go server), the kernel keeps it after a RECONFIGURE by a
// re-adopting process, and once that thread is gone the number may be
// reused by any process. The backend identifier is fixed at CONNECT and a
// RECONFIGURE must repeat it exactly, so it cannot name a re-adopter
// either. And the kernel exposes no configuration time to compare a
// process start time with (sysfs file times are when the inode was
// instantiated, not when the attribute was created).
//
// So every server of ours holds a lock named by the backend identifier
// for as long as it serves it: a unix datagram socket bound to an address
// in the abstract namespace. Only one socket can have an address; the
// kernel releases it when the socket closes, which happens when the
// process ends however it ends (its last thread closes its descriptors,
// before the process can be reaped), whatever becomes of its pid. The scope of the abstract namespace is the network
// namespace: servers of one node must share it, as the node plugin does
// with the host network.

// backendLock is held while this process serves a backend identifier.
type backendLock struct {
	conn *net.UnixConn
}

// ErrServed is returned (wrapped) by Attach when another server holds the
// backend identifier's lock: a live process serves the device.
var ErrServed = errors.New("nbdattach: the backend is served by a live process")

// backendLockAddr is the abstract address ("@" in Go's notation) of id's
// lock: a hash, since identifiers may be longer than an address.
func backendLockAddr(id string) *net.UnixAddr {
	sum := sha256.Sum256([]byte(id))
	return &net.UnixAddr{Net: "unixgram", Name: "@csi-qcow2/nbd-backend/" + hex.EncodeToString(sum[:])}
}

// lockBackend takes id's lock, or fails with ErrServed when a live
// process (this one included) holds it.
func lockBackend(id string) (*backendLock, error) {
	c, err := net.ListenUnixgram("unixgram", backendLockAddr(id))
	if errors.Is(err, unix.EADDRINUSE) {
		return nil, fmt.Errorf("%w (backend %q: a process holds its lock)", ErrServed, id)
	}
	if err != nil {
		return nil, fmt.Errorf("nbdattach: lock backend %q: %w", id, err)
	}
	return &backendLock{conn: c}, nil
}

func (l *backendLock) release() {
	if l != nil {
		l.conn.Close()
	}
}

// backendServed reports whether some process holds id's lock. It only
// looks: connecting a datagram socket to the address succeeds when a
// socket is bound there and creates nothing, so it never stands in the way
// of an Attach.
func backendServed(id string) bool {
	c, err := net.DialUnix("unixgram", nil, backendLockAddr(id))
	if err != nil {
		return false
	}
	c.Close()
	return true
}
