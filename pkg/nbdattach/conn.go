package nbdattach

import (
	"bufio"
	"net"
	"time"
)

// readBufferSize is the connection's read buffer: many small request
// headers arrive per read; larger write payloads bypass it.
const readBufferSize = 128 << 10

// connState is one client connection: what the handshake negotiated and
// the machinery of the transmission phase.
type connState struct {
	srv *Server
	nc  net.Conn
	br  *bufio.Reader

	// Negotiated during the handshake.
	noZeroes   bool
	structured bool
	metaAlloc  bool   // base:allocation selected
	metaExport string // the export SET_META_CONTEXT named

	// Transmission phase.
	exp          *export // the export joined; set once, by Server.join
	backend      Backend
	nowaitReader NoWaitReader // the backend's, if it has one
	// The request reader's own state (transmission.go, inline).
	nowaitOff bool      // ReadAtNoWait is not supported here
	slowUntil time.Time // no waiting inline requests until then
	backoff   time.Duration
	// holdTimer flushes the reply queue when an inline request that may
	// wait keeps queued replies for maxReplyHold (runInline); made at
	// its first use, then reset and stopped around each such request.
	holdTimer *time.Timer
	caps      Caps
	out       replyWriter
	limit     inflight
}

// sendBufferSize is the send buffer the server asks for on a unix-domain
// socket: room for a few 1 MiB READ replies, each then one writev, where
// the default of 208 KiB split one into about eight writev calls, each
// waiting for the client to drain the socket. The kernel doubles what is
// asked (for its bookkeeping) and caps it at twice net.core.wmem_max:
// 416 KiB with a stock wmem_max of 208 KiB.
const sendBufferSize = 4 << 20

func newConnState(s *Server, c net.Conn) *connState {
	// Not on TCP: setting SO_SNDBUF there fixes the buffer and turns off
	// the kernel's autotuning, which grows it up to tcp_wmem[2] as the
	// connection needs.
	if uc, ok := c.(*net.UnixConn); ok {
		_ = uc.SetWriteBuffer(sendBufferSize) // a hint: the default works too
	}
	cs := &connState{srv: s, nc: c, br: bufio.NewReaderSize(c, readBufferSize)}
	cs.out.conn = c
	cs.limit.init(s.opts.MaxInFlightBytes, s.opts.MaxInFlightRequests)
	return cs
}
