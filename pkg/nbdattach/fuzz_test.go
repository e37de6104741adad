package nbdattach

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
)

// fuzzHandshakeTimeout bounds a handshake that stalls; the fuzz inputs end
// with EOF, so only the server's own bugs would reach it.
const fuzzHandshakeTimeout = 5 * time.Second

// FuzzServe feeds arbitrary client bytes to the server: the handshake and
// option parser (ServeConn) when the first byte is even, the transmission
// request parser (ServeTransmission, as for the kernel) when it is odd.
// Bit 1 of the first byte makes the export read-only. The server must
// neither panic nor hang: every input is served with a deadline, and the
// server's end must close once the client's bytes are consumed.
func FuzzServe(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) == 0 {
			return
		}
		mode, stream := in[0], in[1:]

		m := newMem(1<<20, allCaps)
		m.caps.ReadOnly = mode&2 != 0
		s := NewServer(Options{HandshakeTimeout: fuzzHandshakeTimeout})
		if err := s.AddExport(&Export{Name: "", Backend: m}); err != nil {
			t.Fatal(err)
		}
		cli, srv := socketPair(t)
		defer cli.Close()
		done := make(chan struct{})
		go func() {
			defer close(done)
			var err error
			if mode&1 == 0 {
				err = s.ServeConn(srv)
			} else {
				err = s.ServeTransmission(srv, "")
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				// The client's bytes end with EOF: a handshake that
				// waited for more stalled in the server.
				t.Errorf("the server stalled until its handshake timeout on %d input bytes: %v", len(stream), err)
			}
		}()
		drained := make(chan struct{})
		go func() {
			io.Copy(io.Discard, cli)
			close(drained)
		}()
		cli.SetWriteDeadline(time.Now().Add(testtools.Patience)) // longer is a hang
		cli.Write(stream)                                        // the server may hang up early
		cli.CloseWrite()
		testtools.Within(t, fmt.Sprintf("the server to finish serving %d input bytes", len(stream)), done)
		testtools.Within(t, "the server to close its end", drained)
		s.Close()
	})
}

// Builders of client byte streams for the seeds.

func optBytes(opt uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, magicOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

func reqBytes(typ, flags uint16, cookie, off uint64, length uint32, payload []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, magicRequest)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, length)
	return append(b, payload...)
}

// fuzzSeeds are complete sessions: every option and command, valid and
// not, in both modes.
func fuzzSeeds() [][]byte {
	flags := binary.BigEndian.AppendUint32(nil, clientFixedNewstyle|clientNoZeroes)
	requests := bytes.Join([][]byte{
		reqBytes(cmdWrite, cflagFUA, 1, 4096, 8, []byte("abcdefgh")),
		reqBytes(cmdRead, 0, 2, 0, 8192, nil),
		reqBytes(cmdRead, cflagDF, 3, 0, 512<<10, nil),
		reqBytes(cmdFlush, 0, 4, 0, 0, nil),
		reqBytes(cmdTrim, 0, 5, 0, 4096, nil),
		reqBytes(cmdWriteZeroes, cflagNoHole|cflagFastZero, 6, 8192, 4096, nil),
		reqBytes(cmdCache, 0, 7, 0, 65536, nil),
		reqBytes(cmdBlockStatus, cflagReqOne, 8, 0, 1<<20, nil),
		reqBytes(cmdRead, 0, 9, 1<<20-1, 2, nil),
		reqBytes(99, 0xffff, 10, 0, 0, nil),
		reqBytes(cmdDisc, 0, 11, 0, 0, nil),
	}, nil)
	handshake := bytes.Join([][]byte{
		flags,
		optBytes(optList, nil),
		optBytes(optStructuredReply, nil),
		optBytes(optListMetaContext, metaData("")),
		optBytes(optSetMetaContext, metaData("", metaBaseAllocation)),
		optBytes(optInfo, infoGoData("", infoName, infoDescription, infoBlockSize)),
		optBytes(optGo, infoGoData("")),
		requests,
	}, nil)
	return [][]byte{
		append([]byte{0}, handshake...),
		append([]byte{2}, handshake...),
		append([]byte{0}, append(flags, optBytes(optExportName, nil)...)...),
		append([]byte{0}, append(flags, optBytes(optAbort, nil)...)...),
		append([]byte{0}, append(flags, optBytes(optGo, []byte{0, 0, 0, 200})...)...),
		append([]byte{1}, requests...),
		append([]byte{3}, requests...),
		append([]byte{1}, reqBytes(cmdWrite, 0, 1, 0, 64<<20, nil)...),
	}
}

// TestWriteFuzzSeeds rewrites testdata/fuzz/FuzzServe and
// testdata/fuzz/FuzzBlockStatusCache from their seeds when
// NBD_WRITE_SEEDS=1; the committed files are what CI runs.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("NBD_WRITE_SEEDS") != "1" {
		t.Skip("set NBD_WRITE_SEEDS=1 to rewrite the committed seed corpus")
	}
	for target, seeds := range map[string][][]byte{"FuzzServe": fuzzSeeds(), "FuzzBlockStatusCache": statusFuzzSeeds()} {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for i, s := range seeds {
			body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s)
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%02d", i)), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}
