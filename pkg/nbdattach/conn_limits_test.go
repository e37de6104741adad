package nbdattach

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
)

// logLines collects a server's log lines.
type logLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *logLines) logf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
}

// with returns the lines that contain all of words.
func (l *logLines) with(words ...string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
next:
	for _, line := range l.lines {
		for _, w := range words {
			if !strings.Contains(line, w) {
				continue next
			}
		}
		out = append(out, line)
	}
	return out
}

// goReply sends GO for name and returns the final reply's type.
func (tc *testClient) goReply(name string) uint32 {
	tc.t.Helper()
	tc.sendOpt(optGo, infoGoData(name))
	rs := tc.replies()
	return rs[len(rs)-1].typ
}

// A GO past MaxConnsPerExport is refused with ERR_POLICY and logged; the
// client may pick another export. EXPORT_NAME and ServeTransmission past
// it end the connection. A connection that ends frees its place.
func TestConnsPerExport(t *testing.T) {
	var log logLines
	s := newTestServer(t, Options{MaxConnsPerExport: 2, Logf: log.logf},
		&Export{Name: "a", Backend: newMem(4096, allCaps)}, &Export{Name: "b", Backend: newMem(4096, allCaps)})
	var first *testClient
	var firstDone <-chan error
	for i := range 2 {
		tc, done := connect(t, s)
		tc.hello(clientFixedNewstyle | clientNoZeroes)
		if typ := tc.goReply("a"); typ != repAck {
			t.Fatalf("connection %d: GO a: %#x", i, typ)
		}
		if i == 0 {
			first, firstDone = tc, done
		}
	}
	over, _ := connect(t, s)
	over.hello(clientFixedNewstyle | clientNoZeroes)
	if typ := over.goReply("a"); typ != repErrPolicy {
		t.Fatalf("GO past the limit: reply %#x, want ERR_POLICY", typ)
	}
	if len(log.with(`"a"`, "maximum", "GO refused")) != 1 {
		t.Errorf("no log line for the refused GO: %q", log.with())
	}
	if typ := over.goReply("b"); typ != repAck {
		t.Errorf("GO b after a refusal: %#x", typ)
	}

	byName, done := connect(t, s)
	byName.hello(clientFixedNewstyle | clientNoZeroes)
	byName.sendOpt(optExportName, []byte("a"))
	if err := waitDone(t, done); !errors.Is(err, errExportFull) {
		t.Errorf("EXPORT_NAME past the limit: %v", err)
	}
	cli, srv := socketPair(t)
	cli.Close() // served anyway, the connection would end at once, without error
	if err := s.ServeTransmission(srv, "a"); !errors.Is(err, errExportFull) {
		t.Errorf("ServeTransmission past the limit: %v", err)
	}

	// The first connection's end frees a place.
	first.request(cmdDisc, 0, 0, 0, 0, nil)
	if err := waitDone(t, firstDone); err != nil {
		t.Fatal(err)
	}
	tc, _ := connect(t, s)
	tc.hello(clientFixedNewstyle | clientNoZeroes)
	if typ := tc.goReply("a"); typ != repAck {
		t.Errorf("GO a after a connection ended: %#x", typ)
	}
}

// A connection past MaxConns is closed before the greeting; a connection
// that ends frees its place.
func TestMaxConns(t *testing.T) {
	s := newTestServer(t, Options{MaxConns: 2}, &Export{Name: "", Backend: newMem(4096, allCaps)})
	var clients []*testClient
	var dones []<-chan error
	for range 2 {
		tc, done := connect(t, s)
		tc.hello(clientFixedNewstyle | clientNoZeroes) // the server has tracked it
		clients, dones = append(clients, tc), append(dones, done)
	}
	over, done := connect(t, s)
	over.c.SetReadDeadline(time.Now().Add(testtools.Patience))
	if n, err := over.c.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("connection past MaxConns: read %d bytes, %v; want EOF before the greeting", n, err)
	}
	if err := waitDone(t, done); !errors.Is(err, ErrTooManyConns) {
		t.Errorf("connection past MaxConns: %v", err)
	}
	clients[0].c.Close()
	waitDone(t, dones[0])
	tc, _ := connect(t, s)
	tc.hello(clientFixedNewstyle | clientNoZeroes)
}
