package nbdattach

import (
	"net"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// sndbuf is c's SO_SNDBUF as the kernel reports it.
func sndbuf(t *testing.T, c syscall.Conn) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	var gerr error
	if err := rc.Control(func(fd uintptr) { n, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF) }); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatal(gerr)
	}
	return n
}

// askedSndbuf is what SO_SNDBUF reports on c after asking for
// sendBufferSize.
func askedSndbuf(t *testing.T, c interface {
	syscall.Conn
	SetWriteBuffer(int) error
}) int {
	t.Helper()
	if err := c.SetWriteBuffer(sendBufferSize); err != nil {
		t.Fatal(err)
	}
	return sndbuf(t, c)
}

// serveGreeted serves srv with ServeConn and returns once the client cli
// has the greeting (the server set the socket up before sending it).
func serveGreeted(t *testing.T, s *Server, cli, srv net.Conn) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- s.ServeConn(srv) }()
	t.Cleanup(func() { cli.Close() })
	(&testClient{t: t, c: cli}).read(18)
	return done
}

// A unix-domain connection asks for a send buffer of sendBufferSize, so
// that a 1 MiB READ reply is one writev where the host allows it; a TCP
// connection keeps the kernel's default, which autotuning grows (setting
// SO_SNDBUF would turn autotuning off). Both are compared with what
// sockets of the same kind report untouched and after asking, not with
// constants, since those depend on the kernel and its sysctls.
func TestConnSendBuffer(t *testing.T) {
	s := newTestServer(t, Options{}, &Export{Name: "", Backend: newMem(1<<20, allCaps)})

	t.Run("unix", func(t *testing.T) {
		a, b := socketPair(t)
		defer a.Close()
		defer b.Close()
		untouched, asked := sndbuf(t, a), askedSndbuf(t, b)
		if asked <= untouched {
			t.Skipf("asking for %d bytes gives %d, the default %d: net.core.wmem_max leaves nothing to test", sendBufferSize, asked, untouched)
		}
		cli, srv := socketPair(t)
		done := serveGreeted(t, s, cli, srv)
		got := sndbuf(t, srv)
		t.Logf("SO_SNDBUF: served %d, untouched %d, asked %d", got, untouched, asked)
		if got != asked {
			t.Errorf("served unix socket: SO_SNDBUF %d, want %d (asked for; untouched %d)", got, asked, untouched)
		}
		cli.Close()
		waitDone(t, done)
	})

	t.Run("tcp", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Skip(err)
		}
		defer l.Close()
		pair := func() (*net.TCPConn, *net.TCPConn) {
			t.Helper()
			cli, err := net.Dial("tcp", l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			srv, err := l.Accept()
			if err != nil {
				t.Fatal(err)
			}
			return cli.(*net.TCPConn), srv.(*net.TCPConn)
		}
		c1, plain := pair()
		defer c1.Close()
		defer plain.Close()
		c2, asking := pair()
		defer c2.Close()
		defer asking.Close()
		untouched, asked := sndbuf(t, plain), askedSndbuf(t, asking)
		cli, srv := pair()
		done := serveGreeted(t, s, cli, srv)
		got := sndbuf(t, srv)
		t.Logf("SO_SNDBUF: served %d, untouched %d, asked %d", got, untouched, asked)
		switch {
		case got == asked && asked != untouched:
			t.Errorf("served TCP socket: SO_SNDBUF %d, what asking for %d bytes gives: autotuning is off (untouched: %d)", got, sendBufferSize, untouched)
		case got != untouched:
			t.Errorf("served TCP socket: SO_SNDBUF %d, an untouched accepted one %d", got, untouched)
		}
		cli.Close()
		waitDone(t, done)
	})
}
