package nbdattach

import (
	"errors"
	"fmt"
	"sync/atomic"
)

// export is the server's record of an Export: what clients are told about
// it (read once, by AddExport, so that negotiating never calls the
// backend) and the connections serving it.
type export struct {
	*Export
	caps Caps
	size int64

	conns map[*connState]struct{} // under Server.mu
	fault atomic.Pointer[error]   // the panic that fenced it (fence.go)
}

// Errors of join, which picks an export for a connection.
var (
	errNoExport   = errors.New("no such export")
	errExportFull = errors.New("export has its maximum of connections")
)

// AddExport offers e; names must be unique and at most 4096 bytes. The
// backend's Size and Caps are read here, once: they must not change while
// the export is offered.
func (s *Server) AddExport(e *Export) error {
	if e == nil || e.Backend == nil {
		return errors.New("nbd: export without a backend")
	}
	if len(e.Name) > maxStringLen || len(e.Description) > maxStringLen {
		return fmt.Errorf("nbd: export name or description longer than %d bytes", maxStringLen)
	}
	rec := &export{Export: e, caps: e.Backend.Caps(), size: e.Backend.Size(), conns: map[*connState]struct{}{}}
	if rec.size < 0 {
		return fmt.Errorf("nbd: export %q has a negative size", e.Name)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.exports[e.Name]; dup {
		return fmt.Errorf("nbd: export %q already exists", e.Name)
	}
	s.exports[e.Name] = rec
	return nil
}

// RemoveExport stops offering the named export to new connections;
// connections already serving it continue.
func (s *Server) RemoveExport(name string) {
	s.mu.Lock()
	delete(s.exports, name)
	s.mu.Unlock()
}

// lookup returns the named export, or nil.
func (s *Server) lookup(name string) *export {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.exports[name]
}

// join makes c one of the named export's connections, within
// MaxConnsPerExport.
func (s *Server) join(c *connState, name string) (*export, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.exports[name]
	switch {
	case e == nil:
		return nil, fmt.Errorf("export %q: %w", name, errNoExport)
	case len(e.conns) >= s.opts.MaxConnsPerExport:
		return nil, fmt.Errorf("export %q: %w (%d)", name, errExportFull, s.opts.MaxConnsPerExport)
	}
	e.conns[c] = struct{}{}
	c.exp = e
	return e, nil
}

// leave takes c off its export; s.mu is held.
func (s *Server) leave(c *connState) {
	if c.exp != nil {
		delete(c.exp.conns, c)
	}
}

// exportList returns the exports sorted by name, for NBD_OPT_LIST.
func (s *Server) exportList() []*export {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*export, 0, len(s.exports))
	for _, e := range s.exports {
		out = append(out, e)
	}
	sortExports(out)
	return out
}
