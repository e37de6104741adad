package nbdattach

import (
	"encoding/binary"
	"errors"
	"fmt"
)

const (
	// cacheChunk is how much NBD_CMD_CACHE reads (or asks a Cacher for)
	// at a time, and so the buffer one CACHE holds.
	cacheChunk = 1 << 20
	// maxCacheLen bounds the work of one CACHE to what a READ may cost:
	// caching is advisory (the spec leaves how much is cached to the
	// server), so a longer request is answered after its first 32 MiB and
	// a 4 GiB CACHE cannot make the server read 4 GiB.
	maxCacheLen = maxPayload
)

// sparseReadMin is the smallest READ for which, with structured replies,
// the server asks the backend for holes and sends them as
// NBD_REPLY_TYPE_OFFSET_HOLE chunks instead of zero bytes.
const sparseReadMin = 256 << 10

// doRead reads and replies: a simple reply with the data, or with
// structured replies one OFFSET_DATA chunk (or data and hole chunks for
// large reads of sparse ranges).
func (c *connState) doRead(r *request) {
	if r.length == 0 {
		c.reply(r, nil)
		return
	}
	r.buf = getBuf(int(r.length))
	if c.structured && r.flags&cflagDF == 0 && c.caps.BlockStatus && r.length >= sparseReadMin {
		c.doSparseRead(r)
		return
	}
	if r.nowait {
		r.nowait = false
		if !c.readNoWait(r) {
			// Not at hand: read in a goroutine, as a request that may
			// wait, and reply as soon as the data is there.
			r.inline = false
			go func() {
				defer c.recoverRequest(r)
				c.readAndReply(r)
			}()
			return
		}
		c.sendRead(r)
		return
	}
	c.readAndReply(r)
}

// readNoWait fills r.buf with the backend's ReadAtNoWait and reports
// whether it got all of it. A backend (or kernel) that does not support
// it at all is not asked again on this connection.
func (c *connState) readNoWait(r *request) bool {
	n, err := c.nowaitReader.ReadAtNoWait(*r.buf, int64(r.off))
	if errors.Is(err, ErrNoWaitUnsupported) {
		c.nowaitOff = true
	}
	return err == nil && n == len(*r.buf)
}

// readAndReply reads r.buf from the backend and replies.
func (c *connState) readAndReply(r *request) {
	if err := c.readFull(*r.buf, int64(r.off)); err != nil {
		c.replyError(r, errnoOf(err), err.Error())
		return
	}
	c.sendRead(r)
}

// sendRead sends the data of a successful READ.
func (c *connState) sendRead(r *request) {
	if !c.structured {
		c.out.send(r, putSimpleReply(r.hdr[:], 0, r.cookie), *r.buf)
		return
	}
	h := appendChunkHeader(r.hdr[:0], replyFlagDone, replyOffsetData, r.cookie, 8+r.length)
	h = binary.BigEndian.AppendUint64(h, r.off)
	c.out.send(r, h, *r.buf)
}

// readFull reads all of p from the backend.
func (c *connState) readFull(p []byte, off int64) error {
	n, err := c.backend.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil {
		err = fmt.Errorf("short read: %d of %d bytes", n, len(p))
	}
	return err
}

func (c *connState) doWrite(r *request) error {
	if r.length > 0 {
		n, err := c.backend.WriteAt(*r.buf, int64(r.off))
		if err != nil {
			return err
		}
		if n != len(*r.buf) {
			return fmt.Errorf("short write: %d of %d bytes", n, r.length)
		}
	}
	return c.fua(r)
}

// fua makes the request's writes durable when the client asked for it.
func (c *connState) fua(r *request) error {
	if r.flags&cflagFUA != 0 {
		return c.backend.Flush()
	}
	return nil
}

func (c *connState) doTrim(r *request) error {
	if r.length > 0 {
		if err := c.backend.Trim(int64(r.off), int64(r.length)); err != nil {
			return err
		}
	}
	return c.fua(r)
}

func (c *connState) doWriteZeroes(r *request) error {
	var f ZeroFlags
	if r.flags&cflagNoHole != 0 {
		f |= ZeroNoHole
	}
	if r.flags&cflagFastZero != 0 {
		f |= ZeroFast
	}
	if r.length > 0 {
		if err := c.backend.WriteZeroes(int64(r.off), int64(r.length), f); err != nil {
			return err
		}
	}
	return c.fua(r)
}

// Cacher is an optional Backend method for NBD_CMD_CACHE; without it the
// server reads the range through and drops the bytes, which warms the
// host's page cache. Either way the server works in pieces of at most
// 1 MiB, and on at most the first 32 MiB of a request.
type Cacher interface {
	Cache(off, n int64) error
}

func (c *connState) doCache(r *request) error {
	ch, cacher := c.backend.(Cacher)
	if !cacher && r.length > 0 {
		r.buf = getBuf(int(min(r.length, cacheChunk)))
	}
	for off, end := int64(r.off), int64(r.off)+int64(min(r.length, maxCacheLen)); off < end; {
		n := min(end-off, cacheChunk)
		var err error
		if cacher {
			err = ch.Cache(off, n)
		} else {
			err = c.readFull((*r.buf)[:n], off)
		}
		if err != nil {
			return err
		}
		off += n
	}
	return nil
}
