package nbdattach

import (
	"errors"
	"fmt"
	"runtime/debug"
)

// One process serves every export of a node, so a panic while serving one
// request (in a backend method, or a bug of ours that one request meets)
// must not end the process. It is recovered where the request runs: the
// request gets EIO, the panic is logged with its stack, and the export is
// fenced: every later request on it, on any connection, gets EIO without
// reaching the backend, whose state (locks, caches) the panic may have
// left inconsistent. Other exports keep serving. A fenced export stays
// fenced until it is closed (CloseExport); Fenced reports it.

// ErrFenced is what Fenced returns (wrapped, with the panic) for an export
// that panicked.
var ErrFenced = errors.New("nbd: export fenced after a panic")

// fence records the export's first panic.
func (e *export) fence(err error) { e.fault.CompareAndSwap(nil, &err) }

// fenced returns the panic that fenced the export, or nil.
func (e *export) fenced() error {
	if p := e.fault.Load(); p != nil {
		return *p
	}
	return nil
}

// Fenced returns nil while the named export serves normally, and an error
// wrapping ErrFenced, naming the panic, once a panic fenced it.
func (s *Server) Fenced(name string) error {
	if e := s.lookup(name); e != nil {
		return e.fenced()
	}
	return fmt.Errorf("nbd: no export %q", name)
}

// recoverRequest is deferred by handle. Every request path sends exactly
// one reply as its last step, and sending calls no backend code, so a
// panic recovered here came before the reply: replying EIO answers the
// request exactly once and its in-flight budget is returned as usual.
func (c *connState) recoverRequest(r *request) {
	v := recover()
	if v == nil {
		return
	}
	err := fmt.Errorf("%w: export %q: panic serving command %d: %v", ErrFenced, c.exp.Name, r.typ, v)
	c.exp.fence(err)
	c.srv.logf("%v\n%s", err, debug.Stack())
	c.replyError(r, errIO, "internal error: the export is fenced")
}

// errPanic marks the errors catch makes of a panic.
var errPanic = errors.New("nbd: panic")

// catch runs f, turning a panic into an error (wrapping errPanic) that is
// logged with its stack: a bug one connection meets outside a request (in
// the handshake, in the request reader) ends that connection, not the
// process.
func (s *Server) catch(what string, f func() error) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("%w %s: %v", errPanic, what, v)
			s.logf("%v\n%s", err, debug.Stack())
		}
	}()
	return f()
}
