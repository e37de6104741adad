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
	// Logf receives one line per connection error; nil discards them.
	Logf func(format string, args ...any)
}

const (
	defaultHandshakeTimeout = 10 * time.Second
	defaultInFlightBytes    = 64 << 20
	defaultInFlightRequests = 256
)

// Server serves exports over NBD. It is safe for concurrent use; one
// Server can serve many connections to many exports.
type Server struct {
	opts Options

	mu        sync.Mutex
	exports   map[string]*Export
	listeners map[net.Listener]struct{}
	conns     map[*connState]struct{}
	closed    bool
	wg        sync.WaitGroup
}

// ErrServerClosed is returned by Serve and ServeConn after Close.
var ErrServerClosed = errors.New("nbd: server closed")

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
	return &Server{
		opts:      opts,
		exports:   map[string]*Export{},
		listeners: map[net.Listener]struct{}{},
		conns:     map[*connState]struct{}{},
	}
}

// AddExport offers e; names must be unique and at most 4096 bytes.
func (s *Server) AddExport(e *Export) error {
	if e == nil || e.Backend == nil {
		return errors.New("nbd: export without a backend")
	}
	if len(e.Name) > maxStringLen || len(e.Description) > maxStringLen {
		return fmt.Errorf("nbd: export name or description longer than %d bytes", maxStringLen)
	}
	if e.Backend.Size() < 0 {
		return fmt.Errorf("nbd: export %q has a negative size", e.Name)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.exports[e.Name]; dup {
		return fmt.Errorf("nbd: export %q already exists", e.Name)
	}
	s.exports[e.Name] = e
	return nil
}

// RemoveExport stops offering the named export to new connections;
// connections already serving it continue.
func (s *Server) RemoveExport(name string) {
	s.mu.Lock()
	delete(s.exports, name)
	s.mu.Unlock()
}

func (s *Server) export(name string) *Export {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.exports[name]
}

// exportList returns the exports sorted by name, for NBD_OPT_LIST.
func (s *Server) exportList() []*Export {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*Export, 0, len(s.exports))
	for _, e := range s.exports {
		out = append(out, e)
	}
	sortExports(out)
	return out
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
	cs := newConnState(s, c)
	if !s.track(cs) {
		c.Close()
		return ErrServerClosed
	}
	defer s.untrack(cs)
	exp, err := cs.handshake()
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
	exp := s.export(name)
	if exp == nil {
		c.Close()
		return fmt.Errorf("nbd: no export %q", name)
	}
	cs := newConnState(s, c)
	if !s.track(cs) {
		c.Close()
		return ErrServerClosed
	}
	defer s.untrack(cs)
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

func (s *Server) track(c *connState) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) untrack(c *connState) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

func (s *Server) logf(format string, args ...any) {
	if s.opts.Logf != nil {
		s.opts.Logf(format, args...)
	}
}
