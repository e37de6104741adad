package nbdattach

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// Export is a named backend the server offers.
type Export struct {
	// Name is what clients ask for; "" is the default export
	// (nbd+unix:///?socket=... names it).
	Name string
	// Description is sent to clients that ask for NBD_INFO_DESCRIPTION.
	Description string
	Backend     Backend
}

// Options tune a Server; zero values pick the defaults.
type Options struct {
	// HandshakeTimeout bounds the whole option haggling of one connection
	// (default 10s): a client that stalls is disconnected.
	HandshakeTimeout time.Duration
	// MaxInFlightBytes bounds the request payload and read buffers one
	// connection holds at once (default 64 MiB, at least one maximal
	// request of 32 MiB).
	MaxInFlightBytes int64
	// MaxInFlightRequests bounds the requests one connection has in
	// flight (default 256).
	MaxInFlightRequests int
	// MaxConnsPerExport bounds the connections serving one export
	// (default 16, the most AttachOptions.Connections allows). A GO past
	// it is refused with NBD_REP_ERR_POLICY (logged) and the client may
	// go on negotiating; an EXPORT_NAME, which has no error reply, and a
	// ServeTransmission past it end the connection with an error.
	MaxConnsPerExport int
	// MaxConns bounds the connections of the whole server, handshakes
	// included (default 512): one past it is closed before the greeting
	// and ServeConn or ServeTransmission returns ErrTooManyConns.
	// Together with MaxInFlightBytes it bounds the server's memory.
	MaxConns int
	// Logf receives one line per connection error; nil discards them.
	Logf func(format string, args ...any)
}

const (
	defaultHandshakeTimeout = 10 * time.Second
	defaultInFlightBytes    = 64 << 20
	defaultInFlightRequests = 256
	defaultConnsPerExport   = 16
	defaultConns            = 512
)

// Server serves exports over NBD. It is safe for concurrent use; one
// Server can serve many connections to many exports.
type Server struct {
	opts Options

	mu        sync.Mutex
	exports   map[string]*export
	listeners map[net.Listener]struct{}
	conns     map[*connState]struct{}
	closed    bool
	wg        sync.WaitGroup
}

var (
	// ErrServerClosed is returned by Serve and ServeConn after Close.
	ErrServerClosed = errors.New("nbd: server closed")
	// ErrTooManyConns is returned for a connection over Options.MaxConns.
	ErrTooManyConns = errors.New("nbd: too many connections")
)

// NewServer returns a server with no exports.
func NewServer(opts Options) *Server {
	if opts.HandshakeTimeout <= 0 {
		opts.HandshakeTimeout = defaultHandshakeTimeout
	}
	if opts.MaxInFlightBytes < maxPayload {
		if opts.MaxInFlightBytes == 0 {
			opts.MaxInFlightBytes = defaultInFlightBytes
		} else {
			opts.MaxInFlightBytes = maxPayload
		}
	}
	if opts.MaxInFlightRequests <= 0 {
		opts.MaxInFlightRequests = defaultInFlightRequests
	}
	if opts.MaxConnsPerExport <= 0 {
		opts.MaxConnsPerExport = defaultConnsPerExport
	}
	if opts.MaxConns <= 0 {
		opts.MaxConns = defaultConns
	}
	return &Server{
		opts:      opts,
		exports:   map[string]*export{},
		listeners: map[net.Listener]struct{}{},
		conns:     map[*connState]struct{}{},
	}
}

// Serve accepts connections on l and serves each in its own goroutine
// until l fails or the server is closed.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()
	for {
		c, err := l.Accept()
		if err != nil {
			if s.isClosed() {
				return ErrServerClosed
			}
			return err
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := s.ServeConn(c); err != nil {
				s.logf("nbd: %v", err)
			}
		}()
	}
}

// ServeConn runs the fixed newstyle handshake on c and then serves the
// negotiated export until the client disconnects. It closes c. A clean
// end (NBD_CMD_DISC, NBD_OPT_ABORT, EOF between requests) returns nil.
func (s *Server) ServeConn(c net.Conn) error {
	cs, err := s.track(c)
	if err != nil {
		return err
	}
	defer s.untrack(cs)
	var exp *export
	err = s.catch("in the handshake", func() (err error) {
		exp, err = cs.handshake()
		return err
	})
	if err != nil || exp == nil {
		c.Close()
		return err
	}
	return cs.transmit(exp)
}

// ServeTransmission serves the named export on c, whose handshake was
// done elsewhere: the kernel NBD driver is handed a socket that is already
// in the transmission phase, with simple replies only and the flags
// ExportFlags reports. It closes c when the client disconnects.
func (s *Server) ServeTransmission(c net.Conn, name string) error {
	cs, err := s.track(c)
	if err != nil {
		return err
	}
	defer s.untrack(cs)
	exp, err := s.join(cs, name)
	if err != nil {
		c.Close()
		return fmt.Errorf("nbd: %w", err)
	}
	return cs.transmit(exp)
}

// ExportFlags are the transmission flags (NBD_FLAG_*) a connection without
// structured replies gets for b: what the kernel must be told when it is
// handed a socket served by ServeTransmission.
func ExportFlags(b Backend) uint16 { return transmissionFlags(b.Caps(), false) }

func transmissionFlags(c Caps, structured bool) uint16 {
	f := uint16(tflagHasFlags | tflagSendFlush | tflagSendCache)
	if c.ReadOnly {
		f |= tflagReadOnly
	} else {
		if c.FUA {
			f |= tflagSendFUA
		}
		if c.Trim {
			f |= tflagSendTrim
		}
		if c.WriteZeroes {
			f |= tflagWriteZeroes
			if c.FastZero {
				f |= tflagSendFastZero
			}
		}
	}
	if c.MultiConn {
		f |= tflagMultiConn
	}
	if c.Rotational {
		f |= tflagRotational
	}
	if structured {
		f |= tflagSendDF
	}
	return f
}

// Close stops every listener and closes every connection, then waits for
// the connections Serve started to end.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	for l := range s.listeners {
		l.Close()
	}
	for c := range s.conns {
		c.nc.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// track registers a new connection, or closes it when the server is
// closed or has MaxConns connections.
func (s *Server) track(c net.Conn) (*connState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var err error
	switch {
	case s.closed:
		err = ErrServerClosed
	case len(s.conns) >= s.opts.MaxConns:
		err = fmt.Errorf("%w: refused one over the limit of %d", ErrTooManyConns, s.opts.MaxConns)
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	cs := newConnState(s, c)
	s.conns[cs] = struct{}{}
	return cs, nil
}

// untrack forgets a connection that ended, and takes it off its export.
func (s *Server) untrack(c *connState) {
	s.mu.Lock()
	delete(s.conns, c)
	s.leave(c)
	s.mu.Unlock()
}

func (s *Server) logf(format string, args ...any) {
	if s.opts.Logf != nil {
		s.opts.Logf(format, args...)
	}
}
