package nbdattach

import (
	"errors"
	"fmt"
)

// Resizer is an optional Backend method: a backend that can grow while it
// is served. Resize returns once the new size is durable (a restarted
// server that opens the backend again sees it), and Size reports it from
// then on. Requests up to the new end may arrive as soon as it returns.
type Resizer interface {
	Resize(size int64) error
}

// ErrShrink is returned (wrapped) for a resize that would make an export
// or a device smaller: its user may hold data past the new end, and the
// kernel's block layer would cut it off under a mounted filesystem.
var ErrShrink = errors.New("nbd: shrinking a served export is not supported")

// ResizeExport grows the named export to size bytes: the backend grows
// first (Resizer), then the server accepts requests up to the new end on
// every connection, old ones included, and tells new connections the new
// size in their handshake. Connections that negotiated earlier are not
// told (the protocol has no message for it); the kernel client learns it
// from Attachment.Resize, which must come after this.
//
// A size equal to the current one does nothing; a smaller one fails with
// ErrShrink. A panic in the backend's Resize fences the export, as one
// while serving a request does.
func (s *Server) ResizeExport(name string, size int64) error {
	e, err := s.beginResize(name)
	if err != nil {
		return err
	}
	defer s.endResize(e)
	e.resizeMu.Lock()
	defer e.resizeMu.Unlock()
	cur := e.size.Load()
	switch {
	case size == cur:
		return nil
	case size < cur:
		return fmt.Errorf("%w: export %q has %d bytes, asked for %d", ErrShrink, name, cur, size)
	case e.caps.ReadOnly:
		return fmt.Errorf("nbd: resize: %w", ErrReadOnly)
	}
	if err := e.fenced(); err != nil {
		return err
	}
	r, ok := e.Backend.(Resizer)
	if !ok {
		return fmt.Errorf("nbd: resize export %q: %w (the backend cannot grow)", name, ErrNotSupported)
	}
	if err := s.resizeBackend(e, r, size); err != nil {
		return fmt.Errorf("nbd: resize export %q to %d bytes: %w", name, size, err)
	}
	// Published only now: no request is checked against a size the
	// backend does not have yet.
	e.size.Store(size)
	return nil
}

// beginResize finds the export and counts the resize in, so that a
// CloseExport waits for it before the caller closes the backend.
func (s *Server) beginResize(name string) (*export, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.exports[name]
	if e == nil || e.closing {
		return nil, fmt.Errorf("nbd: resize export %q: %w", name, errNoExport)
	}
	e.resizing++
	return e, nil
}

func (s *Server) endResize(e *export) {
	s.mu.Lock()
	e.resizing--
	s.retireIfIdle(e)
	s.mu.Unlock()
}

// resizeBackend runs the backend's Resize; a panic there fences the
// export (its state is unknown) instead of ending the process.
func (s *Server) resizeBackend(e *export, r Resizer, size int64) error {
	err := s.catch(fmt.Sprintf("resizing export %q", e.Name), func() error { return r.Resize(size) })
	if errors.Is(err, errPanic) {
		e.fence(fmt.Errorf("%w: %v", ErrFenced, err))
	}
	if err != nil {
		return err
	}
	if got := e.Backend.Size(); got != size {
		return fmt.Errorf("the backend reports %d bytes after growing to %d", got, size)
	}
	return nil
}
