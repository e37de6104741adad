package nbdattach

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"testing"
)

// transmissionClient returns a client already in the transmission phase.
func transmissionClient(t *testing.T, m *memBackend, structured bool) (*testClient, <-chan error) {
	tc, done := serve(t, m, Options{})
	tc.negotiate("", structured)
	return tc, done
}

func TestReadWriteFlushFUA(t *testing.T) {
	for _, structured := range []bool{false, true} {
		m := newMem(1<<20, allCaps)
		tc, done := transmissionClient(t, m, structured)
		payload := bytes.Repeat([]byte("nbd!"), 2048)
		tc.request(cmdWrite, cflagFUA, 1, 4096, uint32(len(payload)), payload)
		if r := tc.readReply(); r.errno != 0 || r.cookie != 1 {
			t.Fatalf("write: %+v", r)
		}
		if f := m.stats().flushes; f != 1 {
			t.Errorf("FUA write made %d flushes, want 1", f)
		}
		tc.request(cmdFlush, 0, 2, 0, 0, nil)
		if r := tc.readReply(); r.errno != 0 || m.stats().flushes != 2 {
			t.Errorf("flush: %+v, %d flushes", r, m.stats().flushes)
		}
		var got []byte
		tc.request(cmdRead, 0, 3, 4096, uint32(len(payload)), nil)
		if structured {
			got, _ = tc.readStructured(4096, len(payload))
		} else {
			got = tc.readReply().data
		}
		if !bytes.Equal(got, payload) {
			t.Errorf("structured=%v: read back differs", structured)
		}
		tc.request(cmdDisc, 0, 4, 0, 0, nil)
		if err := waitDone(t, done); err != nil {
			t.Errorf("disconnect: %v", err)
		}
	}
}

func TestTrimZeroesCache(t *testing.T) {
	m := newMem(1<<20, allCaps)
	for i := range m.data {
		m.data[i] = 0xff
	}
	tc, _ := transmissionClient(t, m, true)
	tc.request(cmdTrim, 0, 1, 0, 8192, nil)
	tc.request(cmdWriteZeroes, cflagNoHole|cflagFastZero, 2, 65536, 4096, nil)
	tc.request(cmdCache, 0, 3, 0, 1<<20, nil)
	for c, r := range tc.replyMap(3) {
		if r.errno != 0 {
			t.Fatalf("cookie %d: errno %d", c, r.errno)
		}
	}
	st := m.stats()
	if st.zeroSeen != ZeroNoHole|ZeroFast {
		t.Errorf("zero flags passed %b", st.zeroSeen)
	}
	if !bytes.Equal(st.data[:8192], make([]byte, 8192)) || !bytes.Equal(st.data[65536:69632], make([]byte, 4096)) || st.data[8192] != 0xff {
		t.Error("trim or zeroing changed the wrong bytes")
	}
}

func TestBlockStatusAndSparseRead(t *testing.T) {
	m := newMem(4<<20, allCaps)
	copy(m.data[1<<20:], bytes.Repeat([]byte{7}, 8192)) // data at 1 MiB
	copy(m.data[3<<20+100:], []byte{1})                 // a byte in the last MiB
	tc, _ := transmissionClient(t, m, true)
	tc.request(cmdBlockStatus, 0, 9, 0, 4<<20, nil)
	got := statusDescriptors(t, tc.readReply())
	hz := uint32(stateHole | stateZero)
	want := []descriptor{{1 << 20, hz}, {8192, 0}, {2<<20 - 8192, hz}, {4096, 0}, {1<<20 - 4096, hz}}
	if len(got) != len(want) {
		t.Fatalf("descriptors %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("descriptors %v, want %v", got, want)
		}
	}
	tc.request(cmdBlockStatus, cflagReqOne, 10, 1<<20, 1<<20, nil)
	if ch := tc.readReply(); len(ch.data) != 12 || binary.BigEndian.Uint32(ch.data[4:]) != 8192 {
		t.Errorf("REQ_ONE: % x", ch.data)
	}
	// A large read of a sparse range comes back as data and hole chunks.
	tc.request(cmdRead, 0, 11, 0, 4<<20, nil)
	data, chunks := tc.readStructured(0, 4<<20)
	if !bytes.Equal(data, m.stats().data) {
		t.Error("sparse read assembled wrong data")
	}
	holes := 0
	for _, c := range chunks {
		if c.typ == replyOffsetHole {
			holes++
		}
	}
	if holes != 3 {
		t.Errorf("%d hole chunks, want 3: %+v", holes, len(chunks))
	}
	// DF forbids fragmenting: one data chunk.
	tc.request(cmdRead, cflagDF, 12, 0, 4<<20, nil)
	if data, chunks := tc.readStructured(0, 4<<20); len(chunks) != 1 || !bytes.Equal(data, m.stats().data) {
		t.Errorf("DF read: %d chunks", len(chunks))
	}
}

func TestRequestErrors(t *testing.T) {
	m := newMem(1<<20, Caps{ReadOnly: true, BlockStatus: true})
	tc, done := transmissionClient(t, m, true)
	cases := []struct {
		typ, flags uint16
		off        uint64
		length     uint32
		payload    []byte
		want       uint32
	}{
		{typ: cmdWrite, off: 0, length: 4, payload: []byte("abcd"), want: errPerm},
		{typ: cmdTrim, off: 0, length: 4096, want: errPerm},
		{typ: cmdWriteZeroes, off: 0, length: 4096, want: errPerm},
		{typ: cmdRead, off: 1 << 20, length: 1, want: errInval},
		{typ: cmdRead, off: 1<<64 - 1, length: 2, want: errInval},
		{typ: cmdRead, off: 0, length: 33 << 20, want: errOverflow},
		{typ: cmdRead, flags: cflagReqOne, off: 0, length: 1, want: errInval},
		{typ: cmdBlockStatus, off: 0, length: 0, want: errInval},
		{typ: cmdBlockStatus, off: 4096, length: 1 << 20, want: errInval},
		{typ: 42, want: errInval},
	}
	for i, c := range cases {
		tc.request(c.typ, c.flags, uint64(i), c.off, c.length, c.payload)
		r := tc.readReply()
		if r.errno != c.want || r.cookie != uint64(i) {
			t.Errorf("case %d (cmd %d): errno %d cookie %d, want %d", i, c.typ, r.errno, r.cookie, c.want)
		}
		if c.typ == cmdRead && (r.simple || r.typ != replyError || r.flags&replyFlagDone == 0) {
			t.Errorf("case %d: a structured READ error must be an error chunk: %+v", i, r)
		}
	}
	if m.stats().writes != 0 {
		t.Error("a refused write reached the backend")
	}
	// The connection still works after errors.
	tc.request(cmdRead, 0, 99, 0, 16, nil)
	if data, _ := tc.readStructured(0, 16); len(data) != 16 {
		t.Fatal("read after errors failed")
	}
	tc.request(cmdDisc, 0, 100, 0, 0, nil)
	if err := waitDone(t, done); err != nil {
		t.Error(err)
	}
}

func TestWriteOutOfRangeIsENOSPC(t *testing.T) {
	m := newMem(4096, allCaps)
	tc, _ := transmissionClient(t, m, false)
	tc.request(cmdWrite, 0, 1, 4000, 200, make([]byte, 200))
	tc.request(cmdWriteZeroes, 0, 2, 4096, 1, nil)
	tc.request(cmdWriteZeroes, cflagFUA|1<<7, 3, 0, 1, nil) // unknown flag
	rs := tc.replyMap(3)
	for c, want := range []uint32{1: errNoSpc, 2: errNoSpc, 3: errInval} {
		if c > 0 && rs[uint64(c)].errno != want {
			t.Errorf("cookie %d: errno %d, want %d", c, rs[uint64(c)].errno, want)
		}
	}
}

func TestBackendErrorsMapToErrno(t *testing.T) {
	m := newMem(4096, allCaps)
	m.readErr = ErrNoSpace
	for _, structured := range []bool{false, true} {
		tc, _ := transmissionClient(t, m, structured)
		tc.request(cmdRead, 0, 5, 0, 512, nil)
		// A failed simple READ carries no payload: the next reply follows
		// directly.
		tc.request(cmdFlush, 0, 6, 0, 0, nil)
		rs := tc.replyMap(2)
		if r := rs[5]; r.errno != errNoSpc || (r.simple && r.data != nil) {
			t.Errorf("structured=%v read error: %+v", structured, r)
		}
		if r := rs[6]; r.errno != 0 {
			t.Errorf("flush after failed read: %+v", r)
		}
	}
	for err, want := range map[error]uint32{ErrReadOnly: errPerm, ErrNotFast: errNotSup, errors.New("x"): errIO, ErrInvalid: errInval} {
		if got := errnoOf(err); got != want {
			t.Errorf("errnoOf(%v) = %d, want %d", err, got, want)
		}
	}
}

func TestProtocolViolationsHangUp(t *testing.T) {
	for name, req := range map[string]func(tc *testClient){
		"bad magic":      func(tc *testClient) { tc.write(make([]byte, requestSize)) },
		"oversize write": func(tc *testClient) { tc.request(cmdWrite, 0, 1, 0, 64<<20, nil) },
	} {
		t.Run(name, func(t *testing.T) {
			tc, done := transmissionClient(t, newMem(1<<20, allCaps), false)
			req(tc)
			if err := waitDone(t, done); err == nil {
				t.Error("no error")
			}
		})
	}
}

// Many requests in flight at once: every reply carries its own cookie and
// data, whatever the order the workers finish in.
func TestManyInFlight(t *testing.T) {
	const n, blk = 300, 4096
	m := newMem(n*blk, allCaps)
	tc, done := serve(t, m, Options{MaxInFlightRequests: 16, MaxInFlightBytes: 32 << 20})
	tc.negotiate("", false)
	written := make(chan struct{})
	go func() {
		for i := range n {
			tc.request(cmdWrite, 0, uint64(i), uint64(i*blk), blk, bytes.Repeat([]byte{byte(i)}, blk))
		}
		<-written
		for _, i := range rand.Perm(n) {
			tc.request(cmdRead, 0, uint64(n+i), uint64(i*blk), blk, nil)
		}
		tc.request(cmdDisc, 0, 0, 0, 0, nil)
	}()
	for c, r := range tc.replyMap(n) {
		if r.errno != 0 || c >= n {
			t.Fatalf("write reply %+v", r)
		}
	}
	close(written)
	for c, r := range tc.replyMap(n) {
		i := c - n
		if r.errno != 0 || i >= n || !bytes.Equal(r.data, bytes.Repeat([]byte{byte(i)}, blk)) {
			t.Fatalf("read reply for cookie %d wrong", c)
		}
	}
	if err := waitDone(t, done); err != nil {
		t.Error(err)
	}
}

// ServeTransmission serves a socket whose handshake happened elsewhere
// (the kernel's case): simple replies from the first byte.
func TestServeTransmission(t *testing.T) {
	m := newMem(1<<20, allCaps)
	s := NewServer(Options{})
	if err := s.AddExport(&Export{Name: "vol", Backend: m}); err != nil {
		t.Fatal(err)
	}
	if f := ExportFlags(m); f&tflagSendDF != 0 || f&tflagSendFUA == 0 || f&tflagMultiConn == 0 {
		t.Errorf("ExportFlags %#x", f)
	}
	cli, srv := socketPair(t)
	defer cli.Close()
	done := make(chan error, 1)
	go func() { done <- s.ServeTransmission(srv, "vol") }()
	tc := &testClient{t: t, c: cli}
	tc.request(cmdWrite, 0, 1, 512, 3, []byte("abc"))
	if r := tc.readReply(); r.errno != 0 || r.cookie != 1 {
		t.Fatalf("write %+v", r)
	}
	tc.request(cmdRead, 0, 2, 512, 3, nil)
	if r := tc.readReply(); string(r.data) != "abc" {
		t.Fatalf("read %+v", r)
	}
	tc.request(cmdDisc, 0, 3, 0, 0, nil)
	if err := waitDone(t, done); err != nil {
		t.Error(err)
	}
	if _, err := cli.Read(make([]byte, 1)); err == nil {
		t.Error("server kept its end open after DISC")
	}
	if err := s.ServeTransmission(srv, "missing"); err == nil {
		t.Error("unknown export served")
	}
}

// A client that pipelines requests, never reads a reply and then breaks
// the protocol must not keep the connection's workers waiting forever.
func TestViolationWithUnreadReplies(t *testing.T) {
	tc, done := serve(t, newMem(1<<20, allCaps), Options{})
	tc.negotiate("", false)
	// One write, so that the server reads it all at once: 64 MiB of
	// replies nobody reads, then a bad magic.
	var stream []byte
	for i := range 64 {
		stream = append(stream, reqBytes(cmdRead, 0, uint64(i), 0, 1<<20, nil)...)
	}
	go tc.c.Write(append(stream, make([]byte, requestSize)...))
	if err := waitDone(t, done); err == nil {
		t.Error("no error for the bad magic")
	}
}
