package nbdattach

import (
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// kernelSocket is one connection between the kernel client and our server:
// the kernel's end as a raw descriptor (handed over by CONNECT, RECONFIGURE
// or NBD_SET_SOCK, then closed here) and ours as a net.Conn.
type kernelSocket struct {
	kernelFD int
	conn     net.Conn
}

// newKernelSocket makes a unix stream socketpair. No handshake ever runs on
// it: the kernel client starts in transmission mode.
func newKernelSocket() (*kernelSocket, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("nbdattach: socketpair: %w", err)
	}
	f := os.NewFile(uintptr(fds[1]), "nbd-server-end")
	conn, err := net.FileConn(f) // dups the descriptor
	f.Close()
	if err != nil {
		unix.Close(fds[0])
		return nil, fmt.Errorf("nbdattach: socketpair: %w", err)
	}
	return &kernelSocket{kernelFD: fds[0], conn: conn}, nil
}

// releaseKernelEnd closes our copy of the kernel's end. Once the kernel
// holds its own reference this changes nothing; if the kernel did not take
// the socket, our end now reads end of file, so a socket nobody serves
// cannot hang the server.
func (s *kernelSocket) releaseKernelEnd() {
	if s.kernelFD >= 0 {
		unix.Close(s.kernelFD)
		s.kernelFD = -1
	}
}

// closeAll drops both ends (a failed attach).
func (s *kernelSocket) closeAll() {
	s.releaseKernelEnd()
	s.conn.Close()
}

func newKernelSockets(n int) ([]*kernelSocket, error) {
	var out []*kernelSocket
	for range n {
		s, err := newKernelSocket()
		if err != nil {
			closeKernelSockets(out)
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

func closeKernelSockets(socks []*kernelSocket) {
	for _, s := range socks {
		s.closeAll()
	}
}

func kernelFDs(socks []*kernelSocket) []int {
	fds := make([]int, len(socks))
	for i, s := range socks {
		fds[i] = s.kernelFD
	}
	return fds
}
