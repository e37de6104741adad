package nbdattach

import (
	"errors"
	"fmt"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Re-adoption: a device carries our backend identifier and no process
// holds the identifier's lock (backend_lock.go), so no server of ours is
// alive; its pid is not consulted. What remains to check is that the
// device and the image agree on the size, and that the kernel really had
// dead connections for the new sockets: it fills dead slots only, and
// drops the other sockets without an error.

// readoptSize compares a device's size with the image's. Equal sizes need
// nothing (0). A larger image grows the device with the RECONFIGURE that
// re-adopts it: the image grew while no server told the kernel (an online
// resize cut short between the image and the kernel, or an offline "img
// resize"), and growing only adds room. A smaller image is refused: the
// device's user may hold data past the image's end, and cutting the
// capacity under it would lose it or fail its I/O.
func readoptSize(dev Device, imageSize uint64) (uint64, error) {
	devSize := uint64(dev.Size)
	switch {
	case imageSize == devSize:
		return 0, nil
	case imageSize > devSize:
		return imageSize, nil
	}
	return 0, fmt.Errorf("nbdattach: %s has %d bytes but the image only %d: re-adopting would cut off the end of a device in use (grow the image to at least %d bytes)",
		dev.Path, devSize, imageSize, devSize)
}

// adoptPatience bounds how long Attach keeps offering sockets to a device
// whose connections are not dead yet. A killed server's connections die
// as soon as the kernel's receive workers run, which a loaded host may
// delay; a device with every connection alive after this long has a live
// server that does not hold our lock (another network namespace, or not
// csi-qcow2 at all).
const adoptPatience = 10 * time.Second

// reconfigureTaken hands the device fresh sockets by RECONFIGURE (with
// the size when grow > 0) until the kernel takes at least one, and returns
// them all with the kernel's ends released: the ones it did not take read
// end of file and go through the relink path, which fills connections
// that die later.
func (a *Attachment) reconfigureTaken(nl *netlinkClient, cfg kernelConfig, grow uint64) ([]*kernelSocket, error) {
	deadline := time.Now().Add(adoptPatience)
	for {
		socks, err := newKernelSockets(a.opts.Connections)
		if err != nil {
			return nil, err
		}
		if err := nl.reconfigure(cfg, kernelFDs(socks), grow); err != nil {
			closeKernelSockets(socks)
			return nil, err
		}
		n, err := releaseAndCountTaken(socks)
		switch {
		case err != nil:
			closeKernelSockets(socks)
			return nil, err
		case n > 0:
			return socks, nil
		}
		closeKernelSockets(socks)
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%w: nbd%d took none of %d new sockets for %v: every connection of it is alive, so some process serves it without holding our lock (another network namespace, or another program)",
				ErrServed, cfg.index, a.opts.Connections, adoptPatience)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// releaseAndCountTaken closes our copies of the kernel's ends and counts
// the sockets the kernel kept.
func releaseAndCountTaken(socks []*kernelSocket) (int, error) {
	n := 0
	for _, s := range socks {
		s.releaseKernelEnd()
		ok, err := s.taken()
		if err != nil {
			return 0, err
		}
		if ok {
			n++
		}
	}
	return n, nil
}

// taken reports, once releaseKernelEnd has run, whether someone else (the
// kernel) still holds the other end. Closing the last reference of a unix
// socket completes before close(2) returns (the final fput runs as task
// work on the way back to user space), and a stream socket whose peer is
// gone polls as hung up at once: no wait is involved.
func (s *kernelSocket) taken() (bool, error) {
	sc, ok := s.conn.(syscall.Conn)
	if !ok {
		return false, errors.New("nbdattach: socket without a descriptor")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false, err
	}
	var revents int16
	var perr error
	if err := rc.Control(func(fd uintptr) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
		for {
			_, perr = unix.Poll(fds, 0)
			if perr != unix.EINTR {
				break
			}
		}
		revents = fds[0].Revents
	}); err != nil {
		return false, err
	}
	if perr != nil {
		return false, fmt.Errorf("nbdattach: poll: %w", perr)
	}
	return revents&(unix.POLLHUP|unix.POLLRDHUP) == 0, nil
}
