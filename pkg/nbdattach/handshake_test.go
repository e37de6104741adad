package nbdattach

import (
	"encoding/binary"
	"errors"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
)

func TestHandshakeGoAndInfo(t *testing.T) {
	tc, _ := serve(t, newMem(1<<20, allCaps), Options{})
	tc.hello(clientFixedNewstyle | clientNoZeroes)
	tc.sendOpt(optInfo, infoGoData("", infoName, infoDescription, infoBlockSize))
	got := map[uint16][]byte{}
	rs := tc.replies()
	for _, r := range rs[:len(rs)-1] {
		if r.typ != repInfo || r.opt != optInfo {
			t.Fatalf("INFO reply %+v", r)
		}
		got[binary.BigEndian.Uint16(r.data)] = r.data[2:]
	}
	if rs[len(rs)-1].typ != repAck {
		t.Fatalf("INFO ended with %#x", rs[len(rs)-1].typ)
	}
	exp := got[infoExport]
	if binary.BigEndian.Uint64(exp) != 1<<20 {
		t.Errorf("size %d", binary.BigEndian.Uint64(exp))
	}
	flags := binary.BigEndian.Uint16(exp[8:])
	want := uint16(tflagHasFlags | tflagSendFlush | tflagSendFUA | tflagSendTrim | tflagWriteZeroes |
		tflagSendFastZero | tflagMultiConn | tflagSendCache)
	if flags != want {
		t.Errorf("flags %#x, want %#x (no DF without structured replies)", flags, want)
	}
	if string(got[infoDescription]) != "test export" || string(got[infoName]) != "" {
		t.Errorf("name %q description %q", got[infoName], got[infoDescription])
	}
	bs := got[infoBlockSize]
	if binary.BigEndian.Uint32(bs) != 1 || binary.BigEndian.Uint32(bs[4:]) != 4096 || binary.BigEndian.Uint32(bs[8:]) != 32<<20 {
		t.Errorf("block sizes % x", bs)
	}
	// INFO leaves the client in option haggling: GO still works, and with
	// structured replies the flags gain DF.
	tc.sendOpt(optStructuredReply, nil)
	if r := tc.readOptReply(); r.typ != repAck {
		t.Fatalf("STRUCTURED_REPLY %#x", r.typ)
	}
	tc.sendOpt(optGo, infoGoData(""))
	rs = tc.replies()
	if f := binary.BigEndian.Uint16(rs[0].data[10:]); f != want|tflagSendDF {
		t.Errorf("GO flags %#x, want %#x", f, want|tflagSendDF)
	}
	tc.request(cmdRead, 0, 7, 0, 512, nil)
	if data, chunks := tc.readStructured(0, 512); len(chunks) != 1 || chunks[0].typ != replyOffsetData || len(data) != 512 {
		t.Fatalf("structured read: %+v", chunks)
	}
}

func TestHandshakeErrors(t *testing.T) {
	tc, _ := serve(t, newMem(4096, Caps{}), Options{})
	tc.hello(clientFixedNewstyle)
	cases := []struct {
		opt  uint32
		data []byte
		want uint32
	}{
		{optGo, infoGoData("nope"), repErrUnknown},
		{optInfo, []byte{0, 0, 0, 9, 'x'}, repErrInvalid},                   // name longer than the data
		{optInfo, append(infoGoData(""), 1), repErrInvalid},                 // trailing byte
		{optList, []byte{1}, repErrInvalid},                                 // LIST takes no data
		{optStructuredReply, []byte{1}, repErrInvalid},                      // nor does STRUCTURED_REPLY
		{optSetMetaContext, metaData("", "base:allocation"), repErrInvalid}, // needs structured replies
		{optListMetaContext, metaData("nope"), repErrUnknown},
		{optStartTLS, nil, repErrPolicy},
		{99, []byte("whatever"), repErrUnsup},
	}
	for _, c := range cases {
		tc.sendOpt(c.opt, c.data)
		if r := tc.readOptReply(); r.typ != c.want || r.opt != c.opt {
			t.Errorf("option %d: reply %#x for %d, want %#x", c.opt, r.typ, r.opt, c.want)
		}
	}
	// No block status on this backend: no meta context offered.
	tc.sendOpt(optListMetaContext, metaData(""))
	if rs := tc.replies(); len(rs) != 1 || rs[0].typ != repAck {
		t.Errorf("LIST_META_CONTEXT without block status: %+v", rs)
	}
	tc.sendOpt(optList, nil)
	rs := tc.replies()
	if len(rs) != 2 || rs[0].typ != repServer || binary.BigEndian.Uint32(rs[0].data) != 0 || rs[1].typ != repAck {
		t.Errorf("LIST: %+v", rs)
	}
}

func TestHandshakeMetaContexts(t *testing.T) {
	tc, _ := serve(t, newMem(4096, allCaps), Options{})
	tc.hello(clientFixedNewstyle | clientNoZeroes)
	for _, q := range [][]string{nil, {"base:"}, {"base:allocation"}} {
		tc.sendOpt(optListMetaContext, metaData("", q...))
		rs := tc.replies()
		if len(rs) != 2 || rs[0].typ != repMetaContext || string(rs[0].data[4:]) != metaBaseAllocation {
			t.Errorf("LIST_META_CONTEXT %q: %+v", q, rs)
		}
	}
	tc.sendOpt(optStructuredReply, nil)
	tc.readOptReply()
	tc.sendOpt(optSetMetaContext, metaData("", "qemu:dirty-bitmap:x", "base:"))
	if rs := tc.replies(); len(rs) != 1 || rs[0].typ != repAck {
		t.Errorf("SET_META_CONTEXT of unknown contexts selected something: %+v", rs)
	}
	tc.sendOpt(optGo, infoGoData(""))
	tc.replies()
	// No context was selected: BLOCK_STATUS is refused.
	tc.request(cmdBlockStatus, 0, 1, 0, 4096, nil)
	if r := tc.readReply(); r.errno != errInval {
		t.Errorf("BLOCK_STATUS without context: errno %d", r.errno)
	}
}

func TestHandshakeExportNameAndZeroes(t *testing.T) {
	for _, noZeroes := range []bool{false, true} {
		tc, _ := serve(t, newMem(8192, Caps{ReadOnly: true}), Options{})
		flags := uint32(clientFixedNewstyle)
		if noZeroes {
			flags |= clientNoZeroes
		}
		tc.hello(flags)
		tc.sendOpt(optExportName, nil)
		r := tc.read(10)
		if binary.BigEndian.Uint64(r) != 8192 || binary.BigEndian.Uint16(r[8:])&tflagReadOnly == 0 {
			t.Fatalf("EXPORT_NAME reply % x", r)
		}
		if !noZeroes {
			if z := tc.read(124); strings.Trim(string(z), "\x00") != "" {
				t.Fatal("reserved bytes not zero")
			}
		}
		tc.request(cmdRead, 0, 1, 4096, 4096, nil)
		if r := tc.readReply(); r.errno != 0 || len(r.data) != 4096 || r.cookie != 1 {
			t.Fatalf("read after EXPORT_NAME: %+v", r)
		}
	}
}

func TestHandshakeHangsUp(t *testing.T) {
	cases := map[string]func(tc *testClient){
		"unknown client flags": func(tc *testClient) { tc.hello(1 << 7) },
		"bad option magic": func(tc *testClient) {
			tc.hello(clientFixedNewstyle)
			tc.write(make([]byte, 16))
		},
		"oversized option": func(tc *testClient) {
			tc.hello(clientFixedNewstyle)
			b := binary.BigEndian.AppendUint64(nil, magicOpt)
			b = binary.BigEndian.AppendUint32(b, optGo)
			tc.write(binary.BigEndian.AppendUint32(b, 1<<30))
		},
		"unknown export by name": func(tc *testClient) {
			tc.hello(clientFixedNewstyle)
			tc.sendOpt(optExportName, []byte("nope"))
		},
	}
	for name, fn := range cases {
		t.Run(name, func(t *testing.T) {
			tc, done := serve(t, newMem(4096, Caps{}), Options{})
			fn(tc)
			if err := waitDone(t, done); err == nil {
				t.Error("no error for a protocol violation")
			}
		})
	}
	t.Run("abort", func(t *testing.T) {
		tc, done := serve(t, newMem(4096, Caps{}), Options{})
		tc.hello(clientFixedNewstyle)
		tc.sendOpt(optAbort, nil)
		if r := tc.readOptReply(); r.typ != repAck {
			t.Errorf("ABORT reply %#x", r.typ)
		}
		if err := waitDone(t, done); err != nil {
			t.Errorf("abort: %v", err)
		}
	})
	t.Run("stalled client", func(t *testing.T) {
		tc, done := serve(t, newMem(4096, Caps{}), Options{HandshakeTimeout: 200 * time.Millisecond})
		// The client flags and half an option header, then nothing. Sent
		// without reading the greeting first and without checking the
		// writes (the socket buffers them): the server may time out
		// before a slow test gets here, and that must count too.
		b := binary.BigEndian.AppendUint32(nil, clientFixedNewstyle)
		_, _ = tc.c.Write(append(b, 0x49, 0x48))
		if err := waitDone(t, done); err == nil {
			t.Error("no error for a stalled handshake")
		}
	})
}

func TestServeListenerAndClose(t *testing.T) {
	s := NewServer(Options{})
	if err := s.AddExport(&Export{Name: "a", Backend: newMem(4096, allCaps)}); err != nil {
		t.Fatal(err)
	}
	if err := s.AddExport(&Export{Name: "a", Backend: newMem(4096, Caps{})}); err == nil {
		t.Error("duplicate export accepted")
	}
	l, err := net.Listen("unix", t.TempDir()+"/s")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(l) }()
	c, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tc := &testClient{t: t, c: c}
	if size, _ := tc.negotiate("a", true); size != 4096 {
		t.Fatalf("size %d", size)
	}
	s.Close()
	if err := <-served; err != ErrServerClosed {
		t.Errorf("Serve after Close: %v", err)
	}
	// EOF or a reset, not the deadline: the server must close its end.
	c.SetReadDeadline(time.Now().Add(testtools.Patience))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("connection still open after Close: read returned %v", err)
	}
}
