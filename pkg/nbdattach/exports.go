package nbdattach

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
)

// export is the server's record of an Export: what clients are told about
// it (read by AddExport, so that negotiating never calls the backend) and
// the connections serving it.
type export struct {
	*Export
	caps Caps
	// size is what new connections are told and the end every request is
	// checked against; only ResizeExport changes it, under resizeMu, after
	// the backend has grown.
	size     atomic.Int64
	resizeMu sync.Mutex

	// Under Server.mu. A closing export takes no new connections and no
	// new resize, and stays in Server.exports (its name taken) until its
	// last connection has ended and a resize that had begun has returned
	// from the backend; then gone is closed.
	conns    map[*connState]struct{}
	resizing int
	closing  bool
	gone     chan struct{}

	fault atomic.Pointer[error] // the panic that fenced it (fence.go)
}

// Errors of join, which picks an export for a connection.
var (
	errNoExport   = errors.New("no such export")
	errExportFull = errors.New("export has its maximum of connections")
)

// AddExport offers e; names must be unique and at most 4096 bytes (the
// name of an export that is still closing is taken). The backend's Size
// and Caps are read here, once: Caps must not change while the export is
// offered, and Size changes only through ResizeExport.
func (s *Server) AddExport(e *Export) error {
	if e == nil || e.Backend == nil {
		return errors.New("nbd: export without a backend")
	}
	if len(e.Name) > maxStringLen || len(e.Description) > maxStringLen {
		return fmt.Errorf("nbd: export name or description longer than %d bytes", maxStringLen)
	}
	size := e.Backend.Size()
	if size < 0 {
		return fmt.Errorf("nbd: export %q has a negative size", e.Name)
	}
	rec := &export{Export: e, caps: e.Backend.Caps(), conns: map[*connState]struct{}{}}
	rec.size.Store(size)
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, dup := s.exports[e.Name]; dup {
		if old.closing {
			return fmt.Errorf("nbd: export %q is still closing", e.Name)
		}
		return fmt.Errorf("nbd: export %q already exists", e.Name)
	}
	s.exports[e.Name] = rec
	return nil
}

// CloseExport stops offering the named export, closes its connections
// and returns once no request (nor a ResizeExport) of the export runs any
// more, so that the caller may then close its backend. Closing is a hard disconnect: the
// replies to requests in flight are lost, but their backend calls run to
// their end first. A kernel device should be detached before (its DISC
// ends the connections cleanly, and a device whose socket is closed under
// it reconnects); CloseExport is then what makes sure.
//
// If ctx ends first, CloseExport returns an error wrapping ctx.Err(): some
// request is still inside the backend (a backend call that hangs, say
// after a panic fenced the export), and the backend must not be closed.
// The export stays closing, its name taken, until that request returns;
// calling CloseExport again waits again. With no export of that name it
// returns nil: nothing of that name runs.
func (s *Server) CloseExport(ctx context.Context, name string) error {
	s.mu.Lock()
	e := s.exports[name]
	if e == nil {
		s.mu.Unlock()
		return nil
	}
	if !e.closing {
		e.closing = true
		e.gone = make(chan struct{})
		for c := range e.conns {
			c.nc.Close()
		}
		s.retireIfIdle(e)
	}
	gone := e.gone
	s.mu.Unlock()
	select {
	case <-gone:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("nbd: export %q still has requests in its backend: %w", name, ctx.Err())
	}
}

// RemoveExport is CloseExport without a deadline: it returns once no
// request of the export runs any more.
func (s *Server) RemoveExport(name string) error {
	return s.CloseExport(context.Background(), name)
}

// retireIfIdle forgets a closing export once its last connection has
// ended and no resize runs; s.mu is held.
func (s *Server) retireIfIdle(e *export) {
	if e.closing && len(e.conns) == 0 && e.resizing == 0 {
		close(e.gone)
		delete(s.exports, e.Name)
	}
}

// lookup returns the named export, or nil (also while it is closing).
func (s *Server) lookup(name string) *export {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.exports[name]; e != nil && !e.closing {
		return e
	}
	return nil
}

// join makes c one of the named export's connections, within
// MaxConnsPerExport.
func (s *Server) join(c *connState, name string) (*export, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.exports[name]
	switch {
	case e == nil || e.closing:
		return nil, fmt.Errorf("export %q: %w", name, errNoExport)
	case len(e.conns) >= s.opts.MaxConnsPerExport:
		return nil, fmt.Errorf("export %q: %w (%d)", name, errExportFull, s.opts.MaxConnsPerExport)
	}
	e.conns[c] = struct{}{}
	c.exp = e
	return e, nil
}

// leave takes c, which has ended, off its export; s.mu is held.
func (s *Server) leave(c *connState) {
	if c.exp != nil {
		delete(c.exp.conns, c)
		s.retireIfIdle(c.exp)
	}
}

// exportList returns the exports sorted by name, for NBD_OPT_LIST.
func (s *Server) exportList() []*export {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*export, 0, len(s.exports))
	for _, e := range s.exports {
		if !e.closing {
			out = append(out, e)
		}
	}
	sortExports(out)
	return out
}
