package nbdattach

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
)

// gatedWrites is a memBackend whose WriteAt waits for release after
// announcing itself on entered.
type gatedWrites struct {
	*memBackend
	entered chan struct{}
	release chan struct{}
}

func newGatedWrites() *gatedWrites {
	return &gatedWrites{memBackend: newMem(1<<20, allCaps), entered: make(chan struct{}, 16), release: make(chan struct{})}
}

func (g *gatedWrites) WriteAt(p []byte, off int64) (int, error) {
	g.entered <- struct{}{}
	<-g.release
	return g.memBackend.WriteAt(p, off)
}

// closedByServer reports on the channel when the server closes the
// client's connection (the read returns EOF or an error).
func closedByServer(tc *testClient) <-chan error {
	ch := make(chan error, 1)
	go func() {
		tc.c.SetReadDeadline(time.Now().Add(testtools.Patience))
		_, err := io.Copy(io.Discard, tc.c)
		if err == nil {
			err = io.EOF
		}
		ch <- err
	}()
	return ch
}

// CloseExport closes the export's connections at once, but returns only
// when the request that was inside the backend has finished. Meanwhile the
// name is neither offered nor free, and other exports keep serving.
// Afterwards the name can be added again.
func TestCloseExportWaitsForRequests(t *testing.T) {
	g := newGatedWrites()
	s := newTestServer(t, Options{}, &Export{Name: "a", Backend: g}, &Export{Name: "b", Backend: newMem(1<<20, allCaps)})
	tc, done := connect(t, s)
	tc.negotiate("a", false)
	tc.request(cmdWrite, 0, 1, 0, 4, []byte("data"))
	testtools.Within(t, "the write to reach the backend", g.entered)

	closed := make(chan error, 1)
	go func() { closed <- s.CloseExport(context.Background(), "a") }()
	select {
	case err := <-closed:
		t.Fatalf("CloseExport returned (%v) while a write was inside the backend", err)
	case <-closedByServer(tc):
	case <-time.After(testtools.Patience):
		t.Fatal("the server did not close the export's connection")
	}

	// Closing: "a" is not offered and its name is taken; "b" serves.
	late, _ := connect(t, s)
	late.hello(clientFixedNewstyle | clientNoZeroes)
	if typ := late.goReply("a"); typ != repErrUnknown {
		t.Errorf("GO to a closing export: %#x, want ERR_UNKNOWN", typ)
	}
	if err := s.AddExport(&Export{Name: "a", Backend: newMem(4096, allCaps)}); err == nil {
		t.Error("the name of a closing export was taken again")
	}
	if typ := late.goReply("b"); typ != repAck {
		t.Fatalf("GO b: %#x", typ)
	}
	late.request(cmdWrite, 0, 2, 0, 4, []byte("bbbb"))
	if r := late.readReply(); r.errno != 0 {
		t.Errorf("write to the other export: errno %d", r.errno)
	}
	select {
	case err := <-closed:
		t.Fatalf("CloseExport returned (%v) while a write was inside the backend", err)
	default:
	}

	close(g.release)
	if err := testtools.Within(t, "CloseExport to return", closed); err != nil {
		t.Fatal(err)
	}
	if g.stats().writes != 1 {
		t.Error("the write in flight did not finish before CloseExport returned")
	}
	waitDone(t, done)
	if err := s.AddExport(&Export{Name: "a", Backend: newMem(4096, allCaps)}); err != nil {
		t.Errorf("adding the name again: %v", err)
	}
	again, _ := connect(t, s)
	again.hello(clientFixedNewstyle | clientNoZeroes)
	if typ := again.goReply("a"); typ != repAck {
		t.Errorf("GO to the new export a: %#x", typ)
	}
}

// A context that ends before the backend returns makes CloseExport return
// its error; a later call waits again. An unknown name closes at once.
func TestCloseExportContext(t *testing.T) {
	g := newGatedWrites()
	s := newTestServer(t, Options{}, &Export{Name: "a", Backend: g})
	tc, _ := connect(t, s)
	tc.negotiate("a", false)
	tc.request(cmdWrite, 0, 1, 0, 4, []byte("data"))
	testtools.Within(t, "the write to reach the backend", g.entered)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for range 2 {
		if err := s.CloseExport(ctx, "a"); !errors.Is(err, context.Canceled) {
			t.Errorf("CloseExport with an ended context while a write runs: %v", err)
		}
	}
	closed := make(chan error, 1)
	go func() { closed <- s.RemoveExport("a") }()
	close(g.release)
	if err := testtools.Within(t, "RemoveExport to return", closed); err != nil {
		t.Error(err)
	}
	if err := s.CloseExport(context.Background(), "nothing"); err != nil {
		t.Errorf("closing an unknown export: %v", err)
	}
}

// Closing an idle export, and a fenced one, forgets it at once.
func TestCloseIdleAndFencedExport(t *testing.T) {
	bad := &panicBackend{memBackend: newMem(1<<20, allCaps)}
	s := newTestServer(t, Options{}, &Export{Name: "idle", Backend: newMem(4096, allCaps)}, &Export{Name: "bad", Backend: bad})
	tc, done := connect(t, s)
	tc.negotiate("bad", false)
	tc.request(cmdFlush, 0, 1, 0, 0, nil)
	if r := tc.readReply(); r.errno != errIO || s.Fenced("bad") == nil {
		t.Fatalf("flush: %+v, fenced: %v", r, s.Fenced("bad"))
	}
	for _, name := range []string{"idle", "bad"} {
		if err := s.RemoveExport(name); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if err := s.AddExport(&Export{Name: name, Backend: newMem(4096, allCaps)}); err != nil {
			t.Errorf("%s: adding again: %v", name, err)
		}
	}
	waitDone(t, done)
	if err := s.Fenced("bad"); err != nil {
		t.Errorf("the new export bad is fenced: %v", err)
	}
}
