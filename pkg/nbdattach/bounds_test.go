package nbdattach

import (
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
)

// statusDescriptors checks that ch is a final base:allocation chunk and
// returns its descriptors.
func statusDescriptors(t testing.TB, ch chunk) []descriptor {
	t.Helper()
	if ch.simple || ch.typ != replyBlockStatus || ch.flags&replyFlagDone == 0 || len(ch.data) < 12 ||
		(len(ch.data)-4)%8 != 0 || binary.BigEndian.Uint32(ch.data) != metaBaseAllocationID {
		t.Fatalf("not a block status chunk: %+v", ch)
	}
	var out []descriptor
	for d := ch.data[4:]; len(d) > 0; d = d[8:] {
		out = append(out, descriptor{binary.BigEndian.Uint32(d), binary.BigEndian.Uint32(d[4:])})
	}
	return out
}

// checkStatus checks that ds describe [off, off+length) of v truly: each
// descriptor starts and ends in granules of its status, and together they
// cover at most length bytes.
func checkStatus(t testing.TB, v *virtBackend, off uint64, length uint32, ds []descriptor) {
	t.Helper()
	pos := off
	for i, d := range ds {
		if d.length == 0 {
			t.Fatalf("descriptor %d is empty", i)
		}
		for _, at := range []uint64{pos, pos + uint64(d.length) - 1} {
			if want := statusOf(v.statusAt(int64(at) / v.gran)); d.status != want {
				t.Fatalf("descriptor %d (%+v at %d) says status %d at %d, the backend %d", i, d, pos, d.status, at, want)
			}
		}
		pos += uint64(d.length)
	}
	if pos-off > uint64(length) {
		t.Fatalf("descriptors cover %d bytes of a %d byte request", pos-off, length)
	}
}

// BLOCK_STATUS of 4 GiB asks the backend piece by piece and answers with
// at most maxDescriptors true descriptors.
func TestBlockStatusAsksInPieces(t *testing.T) {
	const length = 1<<32 - 4096
	for _, c := range []struct {
		name  string
		gran  int64
		flags uint16
		want  int // descriptors
	}{
		{"fine runs", 512, 0, maxDescriptors},
		{"fine runs, REQ_ONE", 512, cflagReqOne, 1},
		{"one run, REQ_ONE", 1 << 40, cflagReqOne, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			v := newVirt(1<<40, c.gran, 1)
			tc, _ := serve(t, v, Options{})
			tc.negotiate("", true)
			tc.request(cmdBlockStatus, c.flags, 1, 4096, length, nil)
			ds := statusDescriptors(t, tc.readReply())
			if len(ds) != c.want {
				t.Errorf("%d descriptors, want %d", len(ds), c.want)
			}
			checkStatus(t, v, 4096, length, ds)
			if c.gran > length && ds[0].length != length {
				t.Errorf("a uniform range was described as %d of %d bytes", ds[0].length, uint32(length))
			}
			if m := v.maxStatus.Load(); m > statusPiece {
				t.Errorf("the backend was asked for %d bytes at once (bound %d)", m, statusPiece)
			}
		})
	}
}

// BLOCK_STATUS and CACHE requests take their share of the in-flight
// budget: with every backend call held, the server starts only as many as
// the budget covers and then stops reading requests.
func TestBlockStatusAndCacheHoldBudget(t *testing.T) {
	const budget, length, sent = 32 << 20, 8 << 20, 200
	for _, c := range []struct {
		typ  uint16
		held int64
	}{
		{cmdBlockStatus, blockStatusHeld(length)},
		{cmdCache, cacheChunk},
	} {
		t.Run(fmt.Sprint("command ", c.typ), func(t *testing.T) {
			v := newVirt(1<<40, 4096, 1)
			v.gate = make(chan struct{})
			s := newTestServer(t, Options{MaxInFlightBytes: budget, MaxInFlightRequests: 1000},
				&Export{Name: "", Backend: v})
			tc, _ := connect(t, s)
			tc.negotiate("", true)
			// One write: the server finds the next requests buffered and
			// does not run the first one inline (which would hold the
			// reader in the gate).
			var stream []byte
			for i := range sent {
				stream = append(stream, reqBytes(c.typ, 0, uint64(i), uint64(i)*length, length, nil)...)
			}
			tc.write(stream)
			want := budget / c.held
			testtools.WaitFor(t, fmt.Sprintf("%d requests held and the reader waiting for budget", want), func() bool {
				n := v.active.Load()
				if n > want {
					t.Fatalf("%d requests of %d budget bytes each run at once on a budget of %d", n, c.held, budget)
				}
				cs := s.connStates()
				return n == want && len(cs) == 1 && cs[0].limit.full()
			})
			close(v.gate)
			for cookie, r := range tc.replyMap(sent) {
				if r.errno != 0 {
					t.Fatalf("cookie %d: errno %d", cookie, r.errno)
				}
			}
		})
	}
}

// A CACHE of 4 GiB reads (or asks a Cacher for) at most maxCacheLen, in
// pieces of at most cacheChunk.
func TestCacheIsBounded(t *testing.T) {
	const length = 1<<32 - 1
	v := newVirt(1<<40, 4096, 1)
	for name, b := range map[string]Backend{"read through": v, "Cacher": virtCacher{v}} {
		t.Run(name, func(t *testing.T) {
			tc, _ := serve(t, b, Options{})
			tc.negotiate("", false)
			tc.request(cmdCache, 0, 1, 0, length, nil)
			if r := tc.readReply(); r.errno != 0 {
				t.Fatalf("CACHE: errno %d", r.errno)
			}
		})
	}
	if r, m := v.readBytes.Load(), v.maxRead.Load(); r > maxCacheLen || m > cacheChunk {
		t.Errorf("CACHE read %d bytes in reads of up to %d (bounds %d, %d)", r, m, maxCacheLen, cacheChunk)
	}
	if r, m := v.cacheBytes.Load(), v.maxCache.Load(); r > maxCacheLen || m > cacheChunk || r == 0 {
		t.Errorf("CACHE asked the Cacher for %d bytes in calls of up to %d (bounds %d, %d)", r, m, maxCacheLen, cacheChunk)
	}
}
