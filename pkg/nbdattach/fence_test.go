package nbdattach

import (
	"errors"
	"strings"
	"sync/atomic"
	"testing"
)

// panicBackend panics in ReadAt at panicOff and in Flush; it counts the
// calls that reach it.
type panicBackend struct {
	*memBackend
	calls atomic.Int64
}

const panicOff = 8192

func (p *panicBackend) ReadAt(b []byte, off int64) (int, error) {
	p.calls.Add(1)
	if off == panicOff {
		panic("backend bug in ReadAt")
	}
	return p.memBackend.ReadAt(b, off)
}

func (p *panicBackend) Flush() error {
	p.calls.Add(1)
	panic("backend bug in Flush")
}

// A panic in a backend method answers its request with EIO, is logged with
// its stack and fences the export: later requests get EIO without reaching
// the backend, on every connection. Another export of the same server
// keeps serving. The panic comes from a READ that the reader runs itself
// (queue depth 1) or from a FLUSH, which always runs in a goroutine.
func TestPanicFencesExport(t *testing.T) {
	for name, c := range map[string]struct {
		typ   uint16
		off   uint64
		where string
	}{
		"inline read":     {cmdRead, panicOff, "ReadAt"},
		"flush goroutine": {cmdFlush, 0, "Flush"},
	} {
		t.Run(name, func(t *testing.T) {
			var log logLines
			bad := &panicBackend{memBackend: newMem(1<<20, allCaps)}
			good := newMem(1<<20, allCaps)
			s := newTestServer(t, Options{Logf: log.logf}, &Export{Name: "bad", Backend: bad}, &Export{Name: "good", Backend: good})
			tc, _ := connect(t, s)
			tc.negotiate("bad", false)
			tc.request(cmdWrite, 0, 1, 0, 4, []byte("data"))
			if r := tc.readReply(); r.errno != 0 {
				t.Fatalf("write before the panic: errno %d", r.errno)
			}
			tc.request(c.typ, 0, 2, c.off, 512, nil)
			if r := tc.readReply(); r.errno != errIO || r.cookie != 2 {
				t.Fatalf("the panicking request: %+v, want EIO", r)
			}
			if lines := log.with("panic", "bug in "+c.where, "goroutine", "(*panicBackend)."+c.where); len(lines) != 1 {
				t.Errorf("want one log line with the panic and its stack, got %q", log.with())
			}
			if err := s.Fenced("bad"); !errors.Is(err, ErrFenced) || !strings.Contains(err.Error(), "bug in "+c.where) {
				t.Errorf("Fenced(bad) = %v", err)
			}
			if err := s.Fenced("good"); err != nil {
				t.Errorf("Fenced(good) = %v", err)
			}

			// Fenced: on this connection and on a new one, every request
			// gets EIO and none reaches the backend.
			calls := bad.calls.Load()
			tc2, _ := connect(t, s)
			tc2.negotiate("bad", false)
			for i, cl := range []*testClient{tc, tc2} {
				cl.request(cmdRead, 0, 3, 0, 4, nil)
				cl.request(cmdWrite, 0, 4, 0, 4, []byte("more"))
				cl.request(cmdFlush, 0, 5, 0, 0, nil)
				for cookie, r := range cl.replyMap(3) {
					if r.errno != errIO {
						t.Errorf("connection %d, cookie %d after the fence: errno %d, want EIO", i, cookie, r.errno)
					}
				}
			}
			if bad.calls.Load() != calls || bad.stats().writes != 1 {
				t.Errorf("requests reached a fenced backend")
			}

			other, _ := connect(t, s)
			other.negotiate("good", false)
			other.request(cmdWrite, 0, 6, 0, 4, []byte("fine"))
			other.request(cmdFlush, 0, 7, 0, 0, nil)
			for cookie, r := range other.replyMap(2) {
				if r.errno != 0 {
					t.Errorf("other export, cookie %d: errno %d", cookie, r.errno)
				}
			}
			other.request(cmdRead, 0, 8, 0, 4, nil)
			if r := other.readReply(); string(r.data) != "fine" {
				t.Errorf("other export read %q", r.data)
			}
		})
	}
}

// A panic outside a request (handshake, request reader) ends only the
// connection: catch turns it into an error and logs the stack.
func TestCatchTurnsPanicIntoError(t *testing.T) {
	var log logLines
	s := NewServer(Options{Logf: log.logf})
	err := s.catch("in a test", func() error { panic("reader bug") })
	if err == nil || !strings.Contains(err.Error(), "reader bug") {
		t.Errorf("catch returned %v", err)
	}
	if len(log.with("reader bug", "goroutine")) != 1 {
		t.Errorf("no log line with the stack: %q", log.with())
	}
}
