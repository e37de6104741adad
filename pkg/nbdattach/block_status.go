package nbdattach

import (
	"encoding/binary"
	"unsafe"
)

const (
	// maxDescriptors bounds one BLOCK_STATUS reply to 128 KiB of
	// descriptors; the spec lets a server describe less than was asked
	// (the client asks again for the rest) and advises at most 2^20.
	maxDescriptors = 16384
	// maxDescriptorLen keeps a descriptor's 32-bit length a multiple of
	// 4 KiB.
	maxDescriptorLen = 1<<32 - 4096
	// statusPiece is the most one backend BlockStatus call is asked to
	// describe. At the finest granularity a reply should use (512 bytes,
	// as the spec advises) its answer has maxDescriptors runs: one call
	// can fill a reply, and no answer grows with the request's length
	// (up to 4 GiB).
	statusPiece = maxDescriptors * 512
	// maxStatusCalls bounds the backend calls of one request: a 4 GiB
	// request takes 512 pieces; a backend that describes less than it is
	// asked gets twice that many calls, then the reply covers what they
	// described.
	maxStatusCalls = 2 * (1 << 32) / statusPiece
	// minHoleChunk: zero ranges shorter than this are sent as data in a
	// sparse read; a chunk header per small hole would cost more than the
	// bytes it saves.
	minHoleChunk = 64 << 10
)

// blockStatusHeld is what a BLOCK_STATUS of length bytes takes from the
// connection's in-flight budget: its reply (8 bytes a descriptor) and the
// backend's answer for one piece (an Extent a run), at one run per 512
// bytes (two more for unaligned ends).
func blockStatusHeld(length uint32) int64 {
	runs := min(int64(length)/512+2, maxDescriptors)
	return structHeaderSize + 4 + runs*(8+int64(unsafe.Sizeof(Extent{})))
}

// descriptor is one base:allocation run of a BLOCK_STATUS reply.
type descriptor struct {
	length uint32
	status uint32
}

func statusOf(e Extent) uint32 {
	var s uint32
	if e.Hole {
		s |= stateHole
	}
	if e.Zero {
		s |= stateZero
	}
	return s
}

// statusReply builds a base:allocation chunk in place from the backend's
// answers: runs of one status are merged, descriptors appended to b as
// they are complete.
type statusReply struct {
	b       []byte     // chunk header, context id, complete descriptors
	n       int        // complete descriptors in b
	max     int        // descriptors allowed
	cur     descriptor // the run being merged (length 0: none yet)
	covered uint64     // bytes described
}

func newStatusReply(b []byte, cookie uint64, max int) statusReply {
	b = appendChunkHeader(b[:0], replyFlagDone, replyBlockStatus, cookie, 0)
	return statusReply{b: binary.BigEndian.AppendUint32(b, metaBaseAllocationID), max: max}
}

// run adds l bytes of status st. It returns false, having added only part
// of them, when they would need a descriptor past max.
func (s *statusReply) run(l uint64, st uint32) bool {
	for l > 0 {
		if s.cur.length == 0 {
			s.cur.status = st
		}
		if s.cur.status == st && s.cur.length < maxDescriptorLen {
			add := min(l, maxDescriptorLen-uint64(s.cur.length))
			s.cur.length += uint32(add)
			s.covered += add
			l -= add
			continue
		}
		if s.n+1 >= s.max {
			return false
		}
		s.flush()
	}
	return true
}

// flush appends the current run to b and starts an empty one.
func (s *statusReply) flush() {
	s.b = binary.BigEndian.AppendUint32(s.b, s.cur.length)
	s.b = binary.BigEndian.AppendUint32(s.b, s.cur.status)
	s.n++
	s.cur = descriptor{}
}

// extents adds a backend's answer for a piece of n bytes, clipped to n;
// it stops at the first run without a positive length (a backend bug:
// what follows would be misplaced). It returns false when the reply is
// full.
func (s *statusReply) extents(exts []Extent, n uint64) bool {
	var got uint64
	for _, e := range exts {
		if e.Length <= 0 || got >= n {
			break
		}
		l := min(uint64(e.Length), n-got)
		if !s.run(l, statusOf(e)) {
			return false
		}
		got += l
	}
	return true
}

// finish completes the chunk: the last run and the chunk's length.
func (s *statusReply) finish() []byte {
	if s.cur.length > 0 {
		s.flush()
	}
	binary.BigEndian.PutUint32(s.b[16:], uint32(len(s.b)-structHeaderSize))
	return s.b
}

// doBlockStatus answers NBD_CMD_BLOCK_STATUS for base:allocation, asking
// the backend piece by piece until the request is covered, the reply is
// full or maxStatusCalls were made. An error before anything was described
// is the reply; after, the client gets what was described and asks again.
func (c *connState) doBlockStatus(r *request) {
	max := maxDescriptors
	if r.flags&cflagReqOne != 0 {
		max = 1
	}
	s := newStatusReply(r.ext, r.cookie, max)
	end := r.off + uint64(r.length)
	for calls := 0; calls < maxStatusCalls; calls++ {
		pos := r.off + s.covered
		if pos >= end {
			break
		}
		n := min(end-pos, statusPiece)
		exts, err := c.backend.BlockStatus(int64(pos), int64(n))
		if err != nil {
			if s.covered == 0 {
				r.ext = s.b
				c.reply(r, err)
				return
			}
			break
		}
		before := s.covered
		if !s.extents(exts, n) || s.covered == before {
			break
		}
	}
	if s.covered == 0 {
		// Status 0 (allocated, not known zero) is always a true answer.
		s.run(uint64(r.length), 0)
	}
	r.ext = s.finish()
	c.out.send(r, r.ext)
}

// segment is a piece of a sparse read: data to read, or a hole.
type segment struct {
	off, n int64 // relative to the request
	hole   bool
}

// sparseSegments splits a read of n bytes by the backend's extents; zero
// ranges of at least minHoleChunk become holes, everything else data.
func sparseSegments(exts []Extent, n int64) []segment {
	var out []segment
	var pos int64
	add := func(l int64, hole bool) {
		if k := len(out); k > 0 && out[k-1].hole == hole {
			out[k-1].n += l
		} else {
			out = append(out, segment{off: pos, n: l, hole: hole})
		}
		pos += l
	}
	for _, e := range exts {
		if e.Length <= 0 || pos >= n {
			continue
		}
		l := min(e.Length, n-pos)
		add(l, e.Zero && l >= minHoleChunk)
	}
	if pos < n {
		add(n-pos, false)
	}
	return out
}

// doSparseRead answers a large structured READ with data chunks and hole
// chunks, so that zero ranges are neither read nor sent.
func (c *connState) doSparseRead(r *request) {
	exts, err := c.backend.BlockStatus(int64(r.off), int64(r.length))
	var segs []segment
	if err == nil {
		segs = sparseSegments(exts, int64(r.length))
	}
	if len(segs) <= 1 && (len(segs) == 0 || !segs[0].hole) {
		segs = []segment{{n: int64(r.length)}}
	}
	buf := *r.buf
	for _, s := range segs {
		if s.hole {
			continue
		}
		if err := c.readFull(buf[s.off:s.off+s.n], int64(r.off)+s.off); err != nil {
			c.replyError(r, errnoOf(err), err.Error())
			return
		}
	}
	// Chunk headers go to r.ext, sized up front so the slices handed to
	// the writer stay valid.
	r.ext = r.ext[:0]
	if need := len(segs) * (structHeaderSize + 12); cap(r.ext) < need {
		r.ext = make([]byte, 0, need)
	}
	bufs := make([][]byte, 0, 2*len(segs))
	for i, s := range segs {
		var flags uint16
		if i == len(segs)-1 {
			flags = replyFlagDone
		}
		start := len(r.ext)
		abs := r.off + uint64(s.off)
		if s.hole {
			r.ext = appendChunkHeader(r.ext, flags, replyOffsetHole, r.cookie, 12)
			r.ext = binary.BigEndian.AppendUint64(r.ext, abs)
			r.ext = binary.BigEndian.AppendUint32(r.ext, uint32(s.n))
			bufs = append(bufs, r.ext[start:])
			continue
		}
		r.ext = appendChunkHeader(r.ext, flags, replyOffsetData, r.cookie, uint32(8+s.n))
		r.ext = binary.BigEndian.AppendUint64(r.ext, abs)
		bufs = append(bufs, r.ext[start:], buf[s.off:s.off+s.n])
	}
	c.out.send(r, bufs...)
}
