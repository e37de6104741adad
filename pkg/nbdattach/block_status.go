package nbdattach

import "encoding/binary"

const (
	// maxDescriptors bounds one BLOCK_STATUS reply (the client asks again
	// for the rest); the spec allows answering less than asked.
	maxDescriptors = 16384
	// maxDescriptorLen keeps a descriptor's 32-bit length a multiple of
	// 4 KiB.
	maxDescriptorLen = 1<<32 - 4096
	// minHoleChunk: zero ranges shorter than this are sent as data in a
	// sparse read; a chunk header per small hole would cost more than the
	// bytes it saves.
	minHoleChunk = 64 << 10
)

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

// descriptors turns a backend's extents for [off, off+n) into merged,
// clipped descriptors of at most max entries.
func descriptors(exts []Extent, n uint64, max int) []descriptor {
	var out []descriptor
	var covered uint64
	for _, e := range exts {
		if e.Length <= 0 || covered >= n {
			continue
		}
		l := min(uint64(e.Length), n-covered)
		covered += l
		st := statusOf(e)
		for l > 0 {
			if k := len(out); k > 0 && out[k-1].status == st && uint64(out[k-1].length) < maxDescriptorLen {
				add := min(l, maxDescriptorLen-uint64(out[k-1].length))
				out[k-1].length += uint32(add)
				l -= add
				continue
			}
			if len(out) == max {
				return out
			}
			add := min(l, maxDescriptorLen)
			out = append(out, descriptor{length: uint32(add), status: st})
			l -= add
		}
	}
	return out
}

// doBlockStatus answers NBD_CMD_BLOCK_STATUS for base:allocation.
func (c *connState) doBlockStatus(r *request) {
	exts, err := c.backend.BlockStatus(int64(r.off), int64(r.length))
	if err != nil {
		c.reply(r, err)
		return
	}
	max := maxDescriptors
	if r.flags&cflagReqOne != 0 {
		max = 1
	}
	ds := descriptors(exts, uint64(r.length), max)
	if len(ds) == 0 {
		// Status 0 (allocated, not known zero) is always a true answer.
		ds = []descriptor{{length: uint32(min(uint64(r.length), maxDescriptorLen))}}
	}
	b := appendChunkHeader(r.ext[:0], replyFlagDone, replyBlockStatus, r.cookie, uint32(4+8*len(ds)))
	b = binary.BigEndian.AppendUint32(b, metaBaseAllocationID)
	for _, d := range ds {
		b = binary.BigEndian.AppendUint32(b, d.length)
		b = binary.BigEndian.AppendUint32(b, d.status)
	}
	r.ext = b
	c.out.send(r, b)
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
