package nbdattach

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// FuzzBlockStatusCache sends BLOCK_STATUS and CACHE requests with hostile
// offsets, lengths and flags to an export of up to 8 TiB (a virtBackend,
// whose allocation is a pattern of runs of 512 bytes to 64 GiB), and
// checks every reply and the bounds the server keeps:
//   - each request gets exactly one reply, with the errno validate
//     promises (EINVAL for bad flags, ranges and a missing meta context);
//   - a BLOCK_STATUS reply is one final base:allocation chunk of 1 to
//     maxDescriptors descriptors (1 with REQ_ONE), none empty, covering at
//     most the request, each true to the backend at both ends;
//   - the backend is never asked for more than statusPiece of status,
//     cacheChunk of reading or caching at once, and a CACHE makes it read
//     at most maxCacheLen.
//
// The input: byte 0 holds flags (bit 0: no meta context negotiated, bit 1:
// the backend is a Cacher, bit 2: the backend gives broken BlockStatus
// answers: none, empty or negative runs, runs past the range, errors),
// byte 1 the run size (512 << b%28), byte 2 the pattern seed, byte 3 the
// export size (1 MiB << b%24, plus b bytes); then up to 16 requests of 15
// bytes: command (even: BLOCK_STATUS, odd: CACHE), flags (16 bits),
// offset (64 bits) and length (32 bits).
func FuzzBlockStatusCache(f *testing.F) {
	for _, s := range statusFuzzSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) < 4 {
			return
		}
		mode := in[0]
		v := newVirt(int64(1<<20)<<(in[3]%24)+int64(in[3]), 512<<(in[1]%28), uint64(in[2]))
		var b Backend = v
		switch {
		case mode&4 != 0:
			b = brokenStatus{v}
		case mode&2 != 0:
			b = virtCacher{v}
		}
		reqs := parseStatusRequests(in[4:])

		s := newTestServer(t, Options{MaxInFlightBytes: 32 << 20}, &Export{Name: "", Backend: b})
		tc, done := connect(t, s)
		meta := mode&1 == 0
		tc.hello(clientFixedNewstyle | clientNoZeroes)
		tc.sendOpt(optStructuredReply, nil)
		if r := tc.readOptReply(); r.typ != repAck {
			t.Fatalf("STRUCTURED_REPLY: %#x", r.typ)
		}
		if meta {
			tc.sendOpt(optSetMetaContext, metaData("", metaBaseAllocation))
			tc.replies()
		}
		tc.sendOpt(optGo, infoGoData(""))
		tc.replies()

		var stream []byte
		for i, r := range reqs {
			stream = append(stream, reqBytes(r.typ, r.flags, uint64(i), r.off, r.length, nil)...)
		}
		tc.write(append(stream, reqBytes(cmdDisc, 0, 0, 0, 0, nil)...))
		replies := tc.replyMap(len(reqs))
		caches := int64(0)
		for i, r := range reqs {
			ch := replies[uint64(i)]
			want := r.errno(uint64(v.size), meta)
			if r.typ == cmdCache {
				caches++
			}
			if mode&4 != 0 && r.typ == cmdBlockStatus && want == 0 && ch.errno == errInval {
				continue // brokenStatus failed the first call
			}
			if ch.errno != want {
				t.Fatalf("request %d (%+v): errno %d, want %d", i, r, ch.errno, want)
			}
			if want != 0 || r.typ == cmdCache {
				if !ch.simple {
					t.Fatalf("request %d (%+v): a structured reply %+v", i, r, ch)
				}
				continue
			}
			if len(ch.data) > 4+8*maxDescriptors {
				t.Fatalf("request %d: a %d byte reply", i, len(ch.data))
			}
			ds := statusDescriptors(t, ch)
			if r.flags&cflagReqOne != 0 && len(ds) != 1 {
				t.Fatalf("request %d: %d descriptors with REQ_ONE", i, len(ds))
			}
			if mode&4 == 0 {
				checkStatus(t, v, r.off, r.length, ds)
				continue
			}
			var sum uint64
			for _, d := range ds {
				if d.length == 0 || d.status&^(stateHole|stateZero) != 0 {
					t.Fatalf("request %d: descriptor %+v", i, d)
				}
				sum += uint64(d.length)
			}
			if sum > uint64(r.length) {
				t.Fatalf("request %d: descriptors cover %d of %d bytes", i, sum, r.length)
			}
		}
		waitDone(t, done)
		if m := v.maxStatus.Load(); m > statusPiece {
			t.Fatalf("the backend was asked for status of %d bytes at once", m)
		}
		if m := max(v.maxRead.Load(), v.maxCache.Load()); m > cacheChunk {
			t.Fatalf("the backend was asked to read or cache %d bytes at once", m)
		}
		if n := v.readBytes.Load() + v.cacheBytes.Load(); n > caches*maxCacheLen {
			t.Fatalf("%d CACHE requests made the backend read or cache %d bytes", caches, n)
		}
	})
}

// statusRequest is one request of a FuzzBlockStatusCache input.
type statusRequest struct {
	typ, flags uint16
	off        uint64
	length     uint32
}

const statusRecordSize = 15

func parseStatusRequests(b []byte) []statusRequest {
	var out []statusRequest
	for ; len(b) >= statusRecordSize && len(out) < 16; b = b[statusRecordSize:] {
		typ := uint16(cmdBlockStatus)
		if b[0]&1 != 0 {
			typ = cmdCache
		}
		out = append(out, statusRequest{typ, binary.BigEndian.Uint16(b[1:]), binary.BigEndian.Uint64(b[3:]), binary.BigEndian.Uint32(b[11:])})
	}
	return out
}

func (r statusRequest) bytes() []byte {
	var typ byte // even: BLOCK_STATUS
	if r.typ == cmdCache {
		typ = 1
	}
	b := binary.BigEndian.AppendUint16([]byte{typ}, r.flags)
	b = binary.BigEndian.AppendUint64(b, r.off)
	return binary.BigEndian.AppendUint32(b, r.length)
}

// errno is the error the server must answer r with on an export of size
// bytes (0 for success).
func (r statusRequest) errno(size uint64, meta bool) uint32 {
	allowed := uint16(cflagFUA)
	if r.typ == cmdBlockStatus {
		allowed = cflagReqOne
	}
	end := r.off + uint64(r.length)
	switch {
	case r.flags&^allowed != 0,
		r.typ == cmdBlockStatus && (!meta || r.length == 0),
		end < r.off || end > size:
		return errInval
	}
	return 0
}

// brokenStatus is a virtBackend whose BlockStatus answers break the
// Backend contract in ways chosen by the offset: no runs, an empty or
// negative run, runs past the range asked, or an error.
type brokenStatus struct{ *virtBackend }

func (b brokenStatus) BlockStatus(off, n int64) ([]Extent, error) {
	exts, _ := b.virtBackend.BlockStatus(off, n)
	switch (uint64(off)/512 + b.seed) % 6 {
	case 0:
		return nil, nil
	case 1:
		return append([]Extent{{Length: 0}}, exts...), nil
	case 2:
		exts[len(exts)/2].Length = -exts[len(exts)/2].Length
	case 3:
		exts[len(exts)-1].Length = 1<<63 - 1
	case 4:
		return nil, ErrInvalid
	}
	return exts, nil
}

// statusFuzzSeeds cover each backend mode with valid and hostile requests.
func statusFuzzSeeds() [][]byte {
	reqs := []statusRequest{
		{cmdBlockStatus, 0, 0, 1 << 20},
		{cmdBlockStatus, cflagReqOne, 4096, 1<<32 - 1},
		{cmdBlockStatus, 0, 1<<64 - 4096, 8192},
		{cmdBlockStatus, 0, 512, 0},
		{cmdBlockStatus, 0xffff, 0, 4096},
		{cmdCache, 0, 0, 1<<32 - 1},
		{cmdCache, cflagFUA, 1 << 30, 65536},
		{cmdCache, 0, 1<<63 + 1, 1},
		{cmdCache, cflagReqOne, 0, 4096},
	}
	var body []byte
	for _, r := range reqs {
		body = append(body, r.bytes()...)
	}
	var out [][]byte
	for _, head := range [][]byte{
		{0, 0, 1, 23},  // 512-byte runs, 8 TiB
		{0, 12, 7, 12}, // 2 MiB runs, 4 GiB + 12
		{1, 0, 1, 23},  // no meta context
		{2, 3, 2, 23},  // Cacher
		{4, 0, 3, 23},  // broken answers
		{4, 20, 5, 22}, // broken answers, 512 MiB runs
	} {
		out = append(out, bytes.Clone(append(head, body...)))
	}
	return out
}
