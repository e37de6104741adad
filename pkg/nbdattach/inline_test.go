package nbdattach

import (
	"bytes"
	"errors"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
)

// The request reader runs small requests itself and queues their replies
// (transmission.go, inline; reply.go). These tests pin what must hold
// whatever runs a request: every reply is sent without the client having
// to send more, FLUSH and FUA replies come after the backend's Flush
// returned, nothing the reader runs can stop it from reading while a
// request waits on the disk, and a disconnect answers every request in
// flight.

// stream sends reqs as one write, so that the server finds them all
// buffered at once (queue depth above 1 as the reader sees it).
func (tc *testClient) stream(reqs ...[]byte) {
	tc.t.Helper()
	tc.write(bytes.Join(reqs, nil))
}

// Replies the reader queued are sent once it has nothing more to read:
// the client sends 40 small writes and reads (more than one batch) and
// then nothing; every reply must come.
func TestInlineRepliesAreFlushed(t *testing.T) {
	m := newMem(1<<20, allCaps)
	tc, done := transmissionClient(t, m, false)
	var reqs [][]byte
	for i := range 20 {
		reqs = append(reqs, reqBytes(cmdWrite, 0, uint64(i), uint64(i)*4096, 4096, bytes.Repeat([]byte{byte(i + 1)}, 4096)))
	}
	tc.stream(reqs...)
	tc.replyMap(20)
	reqs = nil
	for i := range 20 {
		tc.readMu.Lock()
		if tc.readLen == nil {
			tc.readLen = map[uint64]int{}
		}
		tc.readLen[uint64(100+i)] = 4096
		tc.readMu.Unlock()
		reqs = append(reqs, reqBytes(cmdRead, 0, uint64(100+i), uint64(i)*4096, 4096, nil))
	}
	tc.stream(reqs...)
	for c, r := range tc.replyMap(20) {
		i := c - 100
		if r.errno != 0 || !bytes.Equal(r.data, bytes.Repeat([]byte{byte(i + 1)}, 4096)) {
			t.Fatalf("read %d: errno %d, wrong data", i, r.errno)
		}
	}
	tc.request(cmdDisc, 0, 999, 0, 0, nil)
	if err := waitDone(t, done); err != nil {
		t.Error(err)
	}
}

// eventBackend is a memBackend that logs writes and flushes in the order
// they returned, and whose Flush can be held.
type eventBackend struct {
	*memBackend
	mu        sync.Mutex
	events    []string
	holdFlush chan struct{} // nil: Flush does not wait
	inFlush   chan struct{}
}

func (e *eventBackend) log(s string) {
	e.mu.Lock()
	e.events = append(e.events, s)
	e.mu.Unlock()
}

func (e *eventBackend) WriteAt(p []byte, off int64) (int, error) {
	n, err := e.memBackend.WriteAt(p, off)
	e.log("write")
	return n, err
}

func (e *eventBackend) Flush() error {
	if e.holdFlush != nil {
		e.inFlush <- struct{}{}
		<-e.holdFlush
	}
	err := e.memBackend.Flush()
	e.log("flush")
	return err
}

func (e *eventBackend) log2() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.events...)
}

// A FLUSH or FUA write is answered only after the backend's Flush
// returned, and it runs in a goroutine: while the backend syncs, the
// reader goes on and answers the writes sent after it.
func TestFlushAndFUAWaitForFlushOnly(t *testing.T) {
	for _, fua := range []bool{false, true} {
		e := &eventBackend{memBackend: newMem(1<<20, allCaps), holdFlush: make(chan struct{}), inFlush: make(chan struct{}, 1)}
		tc, done := serve(t, e, Options{})
		tc.negotiate("", false)
		payload := bytes.Repeat([]byte{7}, 4096)
		var reqs [][]byte
		for i := range 5 {
			reqs = append(reqs, reqBytes(cmdWrite, 0, uint64(i), uint64(i)*4096, 4096, payload))
		}
		if fua {
			reqs = append(reqs, reqBytes(cmdWrite, cflagFUA, 100, 64<<10, 4096, payload))
		} else {
			reqs = append(reqs, reqBytes(cmdFlush, 0, 100, 0, 0, nil))
		}
		for i := range 5 {
			reqs = append(reqs, reqBytes(cmdWrite, 0, uint64(10+i), uint64(32+i)*4096, 4096, payload))
		}
		tc.stream(reqs...)
		testtools.Within(t, "the backend's Flush", e.inFlush)
		// The ten plain writes are answered while Flush is held.
		for c, r := range tc.replyMap(10) {
			if c == 100 || r.errno != 0 {
				t.Fatalf("fua=%v: reply %+v while Flush was held", fua, r)
			}
		}
		close(e.holdFlush)
		if r := tc.readReply(); r.cookie != 100 || r.errno != 0 {
			t.Fatalf("fua=%v: flush reply %+v", fua, r)
		}
		// The five writes read before the FLUSH returned before Flush
		// was called (the reader ran them, or their replies would be
		// out of the FLUSH's reach; they were all answered above).
		ev := e.log2()
		if ev[len(ev)-1] != "flush" {
			t.Errorf("fua=%v: last event %q, want the flush (events %v)", fua, ev[len(ev)-1], ev)
		}
		if n := countPrefix(ev, "write"); n < 5 {
			t.Errorf("fua=%v: only %d writes before the flush: %v", fua, n, ev)
		}
		tc.request(cmdDisc, 0, 999, 0, 0, nil)
		if err := waitDone(t, done); err != nil {
			t.Error(err)
		}
	}
}

func countPrefix(ev []string, s string) int {
	n := 0
	for _, e := range ev {
		if e != s {
			break
		}
		n++
	}
	return n
}

// A DISC (or EOF) right behind a batch of requests the reader ran itself:
// every one is answered before the server closes its end.
func TestDisconnectAnswersInlineRequests(t *testing.T) {
	for _, eof := range []bool{false, true} {
		m := newMem(1<<20, allCaps)
		tc, done := transmissionClient(t, m, true)
		var reqs [][]byte
		for i := range 10 {
			reqs = append(reqs, reqBytes(cmdWrite, 0, uint64(i), uint64(i)*4096, 4096, bytes.Repeat([]byte{1}, 4096)))
		}
		if !eof {
			reqs = append(reqs, reqBytes(cmdDisc, 0, 99, 0, 0, nil))
		}
		tc.stream(reqs...)
		if eof {
			tc.c.(*net.UnixConn).CloseWrite()
		}
		if got := len(tc.replyMap(10)); got != 10 {
			t.Fatalf("%d replies", got)
		}
		if err := waitDone(t, done); err != nil {
			t.Error(err)
		}
		if m.stats().writes != 10 {
			t.Errorf("%d writes", m.stats().writes)
		}
	}
}

// nowaitBackend is a memBackend with ReadAtNoWait: blocks whose index is
// in cold "would block" until they have been read once with ReadAt.
type nowaitBackend struct {
	*memBackend
	mu          sync.Mutex
	cold        map[int64]bool
	unsupported bool
	nowaits     atomic.Int64
	reads       atomic.Int64
}

func (b *nowaitBackend) ReadAt(p []byte, off int64) (int, error) {
	b.reads.Add(1)
	b.mu.Lock()
	delete(b.cold, off/4096)
	b.mu.Unlock()
	return b.memBackend.ReadAt(p, off)
}

func (b *nowaitBackend) ReadAtNoWait(p []byte, off int64) (int, error) {
	b.nowaits.Add(1)
	if b.unsupported {
		return 0, ErrNoWaitUnsupported
	}
	b.mu.Lock()
	cold := b.cold[off/4096]
	b.mu.Unlock()
	if cold {
		clear(p)
		return 0, ErrWouldBlock
	}
	return b.memBackend.ReadAt(p, off)
}

// Small READs behind others are tried with ReadAtNoWait; those that would
// block are read again with ReadAt, and every reply has the right data.
// A backend that reports ErrNoWaitUnsupported is asked once.
func TestReadNoWait(t *testing.T) {
	for _, unsupported := range []bool{false, true} {
		b := &nowaitBackend{memBackend: newMem(1<<20, allCaps), cold: map[int64]bool{}, unsupported: unsupported}
		for i := range b.data {
			b.data[i] = byte(i / 4096)
		}
		for i := int64(0); i < 256; i += 3 {
			b.cold[i] = true
		}
		tc, done := serve(t, b, Options{})
		tc.negotiate("", false)
		for c, r := range pipelineReads(tc, 64) {
			if r.errno != 0 || !bytes.Equal(r.data, bytes.Repeat([]byte{byte(c)}, 4096)) {
				t.Fatalf("unsupported=%v: read %d wrong", unsupported, c)
			}
		}
		nw, rd := b.nowaits.Load(), b.reads.Load()
		switch {
		case unsupported && nw != 1:
			t.Errorf("ReadAtNoWait asked %d times after ErrNoWaitUnsupported, want 1", nw)
		case !unsupported && (nw < 32 || rd < 20):
			t.Errorf("%d ReadAtNoWait and %d ReadAt calls: want most reads tried without waiting, the cold ones read again", nw, rd)
		}
		tc.request(cmdDisc, 0, 999, 0, 0, nil)
		if err := waitDone(t, done); err != nil {
			t.Error(err)
		}
	}
}

// spinBackend's ReadAt busy-waits about 100 µs (a fast disk, well under
// slowInline, so that no back-off confounds the test) and records the
// most ReadAt calls it saw running at once. It has no ReadAtNoWait.
type spinBackend struct {
	*memBackend
	cur, max atomic.Int32
}

func (b *spinBackend) ReadAt(p []byte, off int64) (int, error) {
	n := b.cur.Add(1)
	for m := b.max.Load(); n > m && !b.max.CompareAndSwap(m, n); m = b.max.Load() {
	}
	// Spin rather than sleep (a short sleep may overshoot slowInline on
	// a loaded host); yield meanwhile, so that other goroutines get to
	// run even with one P.
	for t0 := time.Now(); time.Since(t0) < 100*time.Microsecond; {
		runtime.Gosched()
	}
	b.cur.Add(-1)
	return b.memBackend.ReadAt(p, off)
}

// At queue depths above 1 the reader never runs a READ that may wait
// (ReadAt) itself: 32 READs sent together to a backend without
// ReadAtNoWait run in goroutines, side by side, as a depth-32 workload
// should, not one after the other on the reader. (One round only: a
// second would find the reader backed off if the host had stalled it for
// slowInline in the first, and pass for the wrong reason.)
func TestReadsThatMayWaitRunConcurrently(t *testing.T) {
	b := &spinBackend{memBackend: newMem(1<<20, allCaps)}
	tc, done := serve(t, b, Options{})
	tc.negotiate("", false)
	for c, r := range pipelineReads(tc, 32) {
		if r.errno != 0 {
			t.Fatalf("read %d: errno %d", c, r.errno)
		}
	}
	if m := b.max.Load(); m < 2 {
		t.Errorf("32 pipelined READs ran one at a time (at most %d in ReadAt at once): the reader ran them itself", m)
	}
	tc.request(cmdDisc, 0, 999, 0, 0, nil)
	if err := waitDone(t, done); err != nil {
		t.Error(err)
	}
}

// slowBackend's WriteAt sleeps for writes at offset slowOff and waits for
// gate at gateOff (saying so on entered).
type slowBackend struct {
	*memBackend
	slowOff, gateOff int64
	entered, gate    chan struct{}
}

func (s *slowBackend) WriteAt(p []byte, off int64) (int, error) {
	switch off {
	case s.slowOff:
		time.Sleep(5 * slowInline)
	case s.gateOff:
		s.entered <- struct{}{}
		select {
		case <-s.gate:
		case <-time.After(5 * time.Second):
		}
	}
	return s.memBackend.WriteAt(p, off)
}

// After a slow write the reader stops running writes itself for a while:
// the next write waits on the disk (here: on a gate) in a goroutine, and a
// READ sent behind it is answered meanwhile.
func TestSlowInlineWriteBacksOff(t *testing.T) {
	s := &slowBackend{memBackend: newMem(1<<20, allCaps), slowOff: 0, gateOff: 8192,
		entered: make(chan struct{}, 1), gate: make(chan struct{})}
	tc, done := serve(t, s, Options{})
	tc.negotiate("", false)
	p := bytes.Repeat([]byte{3}, 4096)
	tc.readMu.Lock()
	tc.readLen = map[uint64]int{3: 4096}
	tc.readMu.Unlock()
	tc.stream(reqBytes(cmdWrite, 0, 1, 0, 4096, p), reqBytes(cmdWrite, 0, 2, 8192, 4096, p))
	testtools.Within(t, "the gated write", s.entered)
	tc.request(cmdRead, 0, 3, 0, 4096, nil)
	got := map[uint64]bool{}
	for range 2 {
		r := tc.readReply()
		got[r.cookie] = true
	}
	if !got[1] || !got[3] {
		t.Fatalf("replies %v before the gated write finished, want 1 and 3", got)
	}
	close(s.gate)
	if r := tc.readReply(); r.cookie != 2 {
		t.Fatalf("reply %+v, want the gated write", r)
	}
	tc.request(cmdDisc, 0, 999, 0, 0, nil)
	if err := waitDone(t, done); err != nil {
		t.Error(err)
	}
}

// gateBackend serves reads from memory at once (ReadAtNoWait) and holds
// a WRITE at gateOff until gate is closed (saying so on entered), as a
// write waiting for the image lock or a sync would.
type gateBackend struct {
	*memBackend
	gateOff int64
	entered chan struct{}
	gate    chan struct{}
}

func (g *gateBackend) ReadAtNoWait(p []byte, off int64) (int, error) {
	return g.memBackend.ReadAt(p, off)
}

func (g *gateBackend) WriteAt(p []byte, off int64) (int, error) {
	if off == g.gateOff {
		g.entered <- struct{}{}
		<-g.gate
	}
	return g.memBackend.WriteAt(p, off)
}

// A READ the reader ran itself is answered while the reader waits in the
// backend for the WRITE sent behind it: its queued reply is not held for
// as long as that WRITE waits (maxReplyHold).
func TestQueuedReplyNotHeldBehindWaitingWrite(t *testing.T) {
	g := &gateBackend{memBackend: newMem(1<<20, allCaps), gateOff: 8192,
		entered: make(chan struct{}, 1), gate: make(chan struct{})}
	for i := range 4096 {
		g.data[i] = byte(i)
	}
	var release sync.Once
	open := func() { release.Do(func() { close(g.gate) }) }
	t.Cleanup(open)
	tc, done := serve(t, g, Options{})
	tc.negotiate("", false)
	tc.readMu.Lock()
	tc.readLen = map[uint64]int{1: 4096}
	tc.readMu.Unlock()
	tc.stream(reqBytes(cmdRead, 0, 1, 0, 4096, nil),
		reqBytes(cmdWrite, 0, 2, 8192, 4096, bytes.Repeat([]byte{9}, 4096)))
	testtools.Within(t, "the gated write", g.entered)
	// The WRITE stays in the backend until the READ's reply has come.
	if r := tc.readReply(); r.cookie != 1 || r.errno != 0 || !bytes.Equal(r.data, g.stats().data[:4096]) {
		t.Fatalf("reply %d (errno %d) while the write waited, want the READ's with its data", r.cookie, r.errno)
	}
	open()
	if r := tc.readReply(); r.cookie != 2 || r.errno != 0 {
		t.Fatalf("reply %+v, want the write's", r)
	}
	tc.request(cmdDisc, 0, 999, 0, 0, nil)
	if err := waitDone(t, done); err != nil {
		t.Error(err)
	}
}

// FileBackend.ReadAtNoWait reads what the page cache holds.
func TestFileBackendReadAtNoWait(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.raw")
	want := bytes.Repeat([]byte("0123456789abcdef"), 4096)
	if err := os.WriteFile(path, want, 0o600); err != nil {
		t.Fatal(err)
	}
	b, err := OpenFileBackend(path, false)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	got := make([]byte, 4096)
	n, err := b.ReadAtNoWait(got, 8192)
	if errors.Is(err, ErrNoWaitUnsupported) {
		t.Skip("no RWF_NOWAIT here")
	}
	if err != nil || n != len(got) || !bytes.Equal(got, want[8192:8192+4096]) {
		t.Fatalf("ReadAtNoWait: %d, %v, data equal %v", n, err, bytes.Equal(got, want[8192:8192+4096]))
	}
}

// After Close, ReadAtNoWait fails and reads nothing, even from a file
// that has been given the closed file's descriptor number since.
func TestFileBackendReadAtNoWaitAfterClose(t *testing.T) {
	dir := t.TempDir()
	old, other := filepath.Join(dir, "old.raw"), filepath.Join(dir, "other.raw")
	if err := os.WriteFile(old, bytes.Repeat([]byte{1}, 8192), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(other, bytes.Repeat([]byte{2}, 8192), 0o600); err != nil {
		t.Fatal(err)
	}
	b, err := OpenFileBackend(old, true)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	if _, err := b.ReadAtNoWait(got, 0); errors.Is(err, ErrNoWaitUnsupported) {
		b.Close()
		t.Skip("no RWF_NOWAIT here")
	}
	fd := b.fd
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(other)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Give the other file the closed one's number, unless Open did
	// (Linux hands out the lowest free number) or something else took it.
	if int(f.Fd()) != fd {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); !errors.Is(err, unix.EBADF) {
			t.Fatalf("descriptor %d was taken by something else", fd)
		}
		if err := unix.Dup3(int(f.Fd()), fd, unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
	}
	clear(got)
	n, err := b.ReadAtNoWait(got, 0)
	if err == nil || n != 0 || bytes.IndexByte(got, 2) >= 0 {
		t.Fatalf("ReadAtNoWait after Close: %d bytes, %v, read the other file: %v", n, err, bytes.IndexByte(got, 2) >= 0)
	}
	if !errors.Is(err, os.ErrClosed) {
		t.Errorf("ReadAtNoWait after Close: %v, want os.ErrClosed", err)
	}
}

// pipelineReads sends n 4 KiB READs (cookie i reads block i) in one write
// and returns their replies by cookie.
func pipelineReads(tc *testClient, n int) map[uint64]chunk {
	var reqs [][]byte
	tc.readMu.Lock()
	tc.readLen = map[uint64]int{}
	for i := range n {
		tc.readLen[uint64(i)] = 4096
		reqs = append(reqs, reqBytes(cmdRead, 0, uint64(i), uint64(i)*4096, 4096, nil))
	}
	tc.readMu.Unlock()
	tc.stream(reqs...)
	return tc.replyMap(n)
}
