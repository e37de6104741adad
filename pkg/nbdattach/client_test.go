package nbdattach

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
)

// testClient speaks the client side of the protocol for the tests, and
// records what it sends (the fuzz seeds are such recordings).
type testClient struct {
	t    testing.TB
	c    net.Conn
	sent bytes.Buffer
	// readLen remembers the length of each READ in flight, which a simple
	// reply's data has.
	readMu  sync.Mutex
	readLen map[uint64]int
}

func (tc *testClient) write(b []byte) {
	tc.t.Helper()
	tc.sent.Write(b)
	if _, err := tc.c.Write(b); err != nil {
		tc.t.Fatalf("client write: %v", err)
	}
}

func (tc *testClient) read(n int) []byte {
	tc.t.Helper()
	b := make([]byte, n)
	tc.c.SetReadDeadline(time.Now().Add(testtools.Patience))
	if _, err := io.ReadFull(tc.c, b); err != nil {
		tc.t.Fatalf("client read of %d bytes: %v", n, err)
	}
	return b
}

// hello reads the server greeting and sends the client flags.
func (tc *testClient) hello(flags uint32) {
	tc.t.Helper()
	g := tc.read(18)
	if binary.BigEndian.Uint64(g) != magicNBD || binary.BigEndian.Uint64(g[8:]) != magicOpt {
		tc.t.Fatalf("bad greeting % x", g)
	}
	if f := binary.BigEndian.Uint16(g[16:]); f != flagFixedNewstyle|flagNoZeroes {
		tc.t.Fatalf("handshake flags %#x", f)
	}
	tc.write(binary.BigEndian.AppendUint32(nil, flags))
}

func (tc *testClient) sendOpt(opt uint32, data []byte) {
	b := binary.BigEndian.AppendUint64(nil, magicOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	tc.write(append(b, data...))
}

type optReply struct {
	opt, typ uint32
	data     []byte
}

func (tc *testClient) readOptReply() optReply {
	tc.t.Helper()
	h := tc.read(20)
	if binary.BigEndian.Uint64(h) != magicOptReply {
		tc.t.Fatalf("bad option reply magic % x", h)
	}
	return optReply{binary.BigEndian.Uint32(h[8:]), binary.BigEndian.Uint32(h[12:]), tc.read(int(binary.BigEndian.Uint32(h[16:])))}
}

// replies reads option replies up to and including the final one.
func (tc *testClient) replies() []optReply {
	var out []optReply
	for {
		r := tc.readOptReply()
		out = append(out, r)
		if r.typ != repServer && r.typ != repInfo && r.typ != repMetaContext {
			return out
		}
	}
}

func infoGoData(name string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

func metaData(name string, queries ...string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = binary.BigEndian.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

// negotiate runs a full modern handshake (structured replies,
// base:allocation, GO) and returns the export size and flags.
func (tc *testClient) negotiate(name string, structured bool) (uint64, uint16) {
	tc.t.Helper()
	tc.hello(clientFixedNewstyle | clientNoZeroes)
	if structured {
		tc.sendOpt(optStructuredReply, nil)
		if r := tc.readOptReply(); r.typ != repAck {
			tc.t.Fatalf("STRUCTURED_REPLY: %#x", r.typ)
		}
		tc.sendOpt(optSetMetaContext, metaData(name, metaBaseAllocation))
		if rs := tc.replies(); len(rs) != 2 || rs[0].typ != repMetaContext {
			tc.t.Fatalf("SET_META_CONTEXT: %+v", rs)
		}
	}
	tc.sendOpt(optGo, infoGoData(name, infoBlockSize))
	var size uint64
	var flags uint16
	for _, r := range tc.replies() {
		switch {
		case r.typ == repInfo && binary.BigEndian.Uint16(r.data) == infoExport:
			size = binary.BigEndian.Uint64(r.data[2:])
			flags = binary.BigEndian.Uint16(r.data[10:])
		case r.typ == repAck:
		case r.typ != repInfo:
			tc.t.Fatalf("GO: reply %#x %q", r.typ, r.data)
		}
	}
	return size, flags
}

func (tc *testClient) request(typ, flags uint16, cookie, off uint64, length uint32, payload []byte) {
	b := binary.BigEndian.AppendUint32(nil, magicRequest)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, length)
	if typ == cmdRead {
		tc.readMu.Lock()
		if tc.readLen == nil {
			tc.readLen = map[uint64]int{}
		}
		tc.readLen[cookie] = int(length)
		tc.readMu.Unlock()
	}
	tc.write(append(b, payload...))
}

// replies reads n replies (simple, or single structured chunks) by cookie.
func (tc *testClient) replyMap(n int) map[uint64]chunk {
	tc.t.Helper()
	out := map[uint64]chunk{}
	for range n {
		r := tc.readReply()
		if _, dup := out[r.cookie]; dup {
			tc.t.Fatalf("two replies for cookie %d", r.cookie)
		}
		out[r.cookie] = r
	}
	return out
}

// chunk is one reply message: a simple reply (typ -1) or a structured chunk.
type chunk struct {
	simple bool
	errno  uint32
	flags  uint16
	typ    uint16
	cookie uint64
	data   []byte
}

// readReply reads a simple reply (with the data of a successful READ) or
// one structured chunk.
func (tc *testClient) readReply() chunk {
	tc.t.Helper()
	h := tc.read(4)
	switch binary.BigEndian.Uint32(h) {
	case magicSimpleReply:
		r := tc.read(12)
		ch := chunk{simple: true, errno: binary.BigEndian.Uint32(r), cookie: binary.BigEndian.Uint64(r[4:])}
		tc.readMu.Lock()
		dataLen := tc.readLen[ch.cookie]
		delete(tc.readLen, ch.cookie)
		tc.readMu.Unlock()
		if ch.errno == 0 && dataLen > 0 {
			ch.data = tc.read(dataLen)
		}
		return ch
	case magicStructReply:
		r := tc.read(16)
		ch := chunk{flags: binary.BigEndian.Uint16(r), typ: binary.BigEndian.Uint16(r[2:]), cookie: binary.BigEndian.Uint64(r[4:])}
		ch.data = tc.read(int(binary.BigEndian.Uint32(r[12:])))
		if ch.typ&(1<<15) != 0 {
			ch.errno = binary.BigEndian.Uint32(ch.data)
		}
		return ch
	}
	tc.t.Fatalf("bad reply magic % x", h)
	return chunk{}
}

// readStructured reads chunks of one structured reply (all one cookie)
// until DONE, assembling READ data into a buffer of length n.
func (tc *testClient) readStructured(off uint64, n int) ([]byte, []chunk) {
	tc.t.Helper()
	buf := make([]byte, n)
	var chunks []chunk
	for {
		ch := tc.readReply()
		chunks = append(chunks, ch)
		switch ch.typ {
		case replyOffsetData:
			o := binary.BigEndian.Uint64(ch.data) - off
			copy(buf[o:], ch.data[8:])
		case replyOffsetHole:
			o := binary.BigEndian.Uint64(ch.data) - off
			clear(buf[o : o+uint64(binary.BigEndian.Uint32(ch.data[8:]))])
		}
		if ch.simple || ch.flags&replyFlagDone != 0 {
			return buf, chunks
		}
	}
}

// memBackend is an in-memory Backend for the tests. Blocks of 4 KiB that
// are all zero report as holes.
type memBackend struct {
	mu       sync.Mutex
	data     []byte
	caps     Caps
	flushes  int
	writes   int
	readErr  error
	zeroSeen ZeroFlags
}

// memStats is a locked copy of what a memBackend saw.
type memStats struct {
	data     []byte
	flushes  int
	writes   int
	zeroSeen ZeroFlags
}

func (m *memBackend) stats() memStats {
	m.mu.Lock()
	defer m.mu.Unlock()
	return memStats{bytes.Clone(m.data), m.flushes, m.writes, m.zeroSeen}
}

func newMem(size int, caps Caps) *memBackend {
	return &memBackend{data: make([]byte, size), caps: caps}
}

func (m *memBackend) Size() int64 { return int64(len(m.data)) }
func (m *memBackend) Caps() Caps  { return m.caps }

func (m *memBackend) ReadAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.readErr != nil {
		return 0, m.readErr
	}
	return copy(p, m.data[off:]), nil
}

func (m *memBackend) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off < 0 || off+int64(len(p)) > int64(len(m.data)) {
		panic(fmt.Sprintf("backend asked to write out of range: %d+%d", off, len(p)))
	}
	m.writes++
	return copy(m.data[off:], p), nil
}

func (m *memBackend) Flush() error {
	m.mu.Lock()
	m.flushes++
	m.mu.Unlock()
	return nil
}

func (m *memBackend) Trim(off, n int64) error { return m.WriteZeroes(off, n, 0) }

func (m *memBackend) WriteZeroes(off, n int64, f ZeroFlags) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.zeroSeen |= f
	clear(m.data[off : off+n])
	return nil
}

func (m *memBackend) BlockStatus(off, n int64) ([]Extent, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Extent
	for pos := off; pos < off+n; {
		next := min((pos/4096+1)*4096, off+n)
		zero := !bytes.ContainsFunc(m.data[pos:next], func(r rune) bool { return r != 0 })
		if k := len(out); k > 0 && out[k-1].Zero == zero {
			out[k-1].Length += next - pos
		} else {
			out = append(out, Extent{Length: next - pos, Hole: zero, Zero: zero})
		}
		pos = next
	}
	return out, nil
}

var allCaps = Caps{MultiConn: true, FUA: true, Trim: true, WriteZeroes: true, FastZero: true, BlockStatus: true}

// serve starts a server with one export "" on b and returns a connected
// client and a channel with ServeConn's result.
func serve(t testing.TB, b Backend, opts Options) (*testClient, <-chan error) {
	t.Helper()
	return connect(t, newTestServer(t, opts, &Export{Name: "", Description: "test export", Backend: b}))
}

// newTestServer returns a server with the exports, closed when the test
// ends. Unless opts set one, the handshake may take as long as a loaded
// host needs.
func newTestServer(t testing.TB, opts Options, exports ...*Export) *Server {
	t.Helper()
	if opts.HandshakeTimeout == 0 {
		opts.HandshakeTimeout = testtools.Patience
	}
	s := NewServer(opts)
	for _, e := range exports {
		if err := s.AddExport(e); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// connect serves a new connection on s (ServeConn) and returns its client
// and a channel with ServeConn's result.
func connect(t testing.TB, s *Server) (*testClient, <-chan error) {
	t.Helper()
	cli, srv := socketPair(t)
	done := make(chan error, 1)
	go func() { done <- s.ServeConn(srv) }()
	t.Cleanup(func() { cli.Close() })
	return &testClient{t: t, c: cli}, done
}

// connStates returns the connections s serves.
func (s *Server) connStates() []*connState {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*connState
	for c := range s.conns {
		out = append(out, c)
	}
	return out
}

// socketPair returns two connected unix stream sockets.
func socketPair(t testing.TB) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1])
}

func waitDone(t testing.TB, done <-chan error) error {
	t.Helper()
	return testtools.Within(t, "the server to end the connection", done)
}
