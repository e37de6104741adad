package nbdattach

import (
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Each connection asks for a send buffer of sendBufferSize (up to the
// host's net.core.wmem_max), so that a 1 MiB READ reply is one writev.
func TestConnSendBuffer(t *testing.T) {
	raw, err := os.ReadFile("/proc/sys/net/core/wmem_max")
	if err != nil {
		t.Skip(err)
	}
	max, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil {
		t.Skip(err)
	}
	_, srv := socketPair(t)
	defer srv.Close()
	newConnState(NewServer(Options{}), srv)
	rc, err := srv.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var got int
	var gerr error
	rc.Control(func(fd uintptr) { got, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF) })
	// The kernel stores twice what it granted.
	if want := 2 * min(sendBufferSize, max); gerr != nil || got < want {
		t.Errorf("SO_SNDBUF %d (%v), want at least %d", got, gerr, want)
	}
}
