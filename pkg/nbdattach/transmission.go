package nbdattach

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
)

// request is one transmission-phase request and the memory of its reply.
type request struct {
	flags  uint16
	typ    uint16
	cookie uint64
	off    uint64
	length uint32

	buf  *[]byte // payload (WRITE) or read buffer, from the pools
	held int64   // bytes taken from the connection's in-flight budget
	hdr  [64]byte
	ext  []byte // reply bytes that do not fit hdr (chunks, descriptors)
}

var requestPool = sync.Pool{New: func() any { return new(request) }}

// maxPooledExt is the largest reply buffer (request.ext) a pooled request
// keeps: enough for the chunk headers of usual replies, while the up to
// 128 KiB of a large BLOCK_STATUS reply go back to the garbage collector
// instead of staying attached to an idle request.
const maxPooledExt = 4 << 10

// transmit serves exp on the connection until the client disconnects,
// then waits for the requests in flight and closes the socket.
func (c *connState) transmit(exp *export) error {
	c.backend = exp.Backend
	c.caps = exp.caps
	c.out.finish = c.finish
	err := c.srv.catch("reading requests", c.readRequests)
	if err != nil {
		// A broken or hostile client: do not wait on replies it may never
		// read; closing fails the pending writes and frees the workers.
		c.nc.Close()
	}
	c.limit.wait()
	c.nc.Close()
	if werr := c.out.failed(); err == nil && werr != nil && !errors.Is(werr, net.ErrClosed) {
		err = werr
	}
	return err
}

// readRequests reads requests and starts a worker for each until
// NBD_CMD_DISC, EOF or a protocol violation.
func (c *connState) readRequests() error {
	var h [requestSize]byte
	for {
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("nbd: reading request: %w", err)
		}
		if binary.BigEndian.Uint32(h[0:]) != magicRequest {
			return errors.New("nbd: bad request magic")
		}
		r := requestPool.Get().(*request)
		r.flags = binary.BigEndian.Uint16(h[4:])
		r.typ = binary.BigEndian.Uint16(h[6:])
		r.cookie = binary.BigEndian.Uint64(h[8:])
		r.off = binary.BigEndian.Uint64(h[16:])
		r.length = binary.BigEndian.Uint32(h[24:])
		switch r.typ {
		case cmdDisc:
			requestPool.Put(r)
			return nil
		case cmdWrite:
			if r.length > maxPayload {
				// The payload cannot be buffered and skipping 4 GiB is not
				// worth it: answer and hang up, as qemu-nbd does.
				c.limit.acquire(0)
				c.replyError(r, errOverflow, "write larger than 32 MiB")
				return fmt.Errorf("nbd: write of %d bytes exceeds the %d byte limit", r.length, maxPayload)
			}
			r.held = int64(r.length)
			c.limit.acquire(r.held)
			r.buf = getBuf(int(r.length))
			if _, err := io.ReadFull(c.br, *r.buf); err != nil {
				c.finish(r)
				return fmt.Errorf("nbd: reading write payload: %w", err)
			}
		case cmdRead:
			r.held = int64(min(r.length, maxPayload))
			c.limit.acquire(r.held)
		case cmdCache:
			r.held = int64(min(r.length, cacheChunk))
			c.limit.acquire(r.held)
		case cmdBlockStatus:
			r.held = blockStatusHeld(r.length)
			c.limit.acquire(r.held)
		default:
			c.limit.acquire(0)
		}
		if c.inline(r) {
			c.handle(r)
		} else {
			go c.handle(r)
		}
	}
}

// inline reports whether the reader should run r itself instead of in a
// new goroutine: when r is the only request in flight and no other one has
// arrived yet (queue depth 1), a goroutine would only add a wake-up on
// another thread. Flushes and FUA writes wait on the disk, so they always
// get their own goroutine: requests that arrive meanwhile are read at once.
func (c *connState) inline(r *request) bool {
	if r.typ == cmdFlush || r.flags&cflagFUA != 0 || c.br.Buffered() > 0 {
		return false
	}
	return c.limit.alone()
}

// finish returns everything a request holds once its reply is sent.
func (c *connState) finish(r *request) {
	putBuf(r.buf)
	held := r.held
	ext := r.ext[:0]
	if cap(ext) > maxPooledExt {
		ext = nil // a large reply's buffer is not kept in the pool
	}
	*r = request{hdr: r.hdr, ext: ext}
	requestPool.Put(r)
	c.limit.release(held)
}

// handle validates and executes one request and sends its reply; a fenced
// export answers EIO without calling the backend.
func (c *connState) handle(r *request) {
	defer c.recoverRequest(r)
	if errno, msg := c.validate(r); errno != 0 {
		c.replyError(r, errno, msg)
		return
	}
	if c.exp.fenced() != nil {
		c.replyError(r, errIO, "the export is fenced after an internal error")
		return
	}
	switch r.typ {
	case cmdRead:
		c.doRead(r)
	case cmdWrite:
		c.reply(r, c.doWrite(r))
	case cmdFlush:
		c.reply(r, c.backend.Flush())
	case cmdTrim:
		c.reply(r, c.doTrim(r))
	case cmdWriteZeroes:
		c.reply(r, c.doWriteZeroes(r))
	case cmdCache:
		c.reply(r, c.doCache(r))
	case cmdBlockStatus:
		c.doBlockStatus(r)
	}
}

// allowedFlags lists the command flags each command accepts.
func (c *connState) allowedFlags(typ uint16) (uint16, bool) {
	switch typ {
	case cmdRead:
		if c.structured {
			return cflagFUA | cflagDF, true
		}
		return cflagFUA, true
	case cmdWrite, cmdTrim:
		return cflagFUA, true
	case cmdWriteZeroes:
		f := uint16(cflagFUA | cflagNoHole)
		if c.caps.FastZero {
			f |= cflagFastZero
		}
		return f, true
	case cmdFlush, cmdCache:
		return cflagFUA, true
	case cmdBlockStatus:
		return cflagReqOne, true
	}
	return 0, false
}

// validate checks a request against the negotiated features and the export
// bounds; a non-zero errno is sent back instead of executing it.
func (c *connState) validate(r *request) (uint32, string) {
	allowed, known := c.allowedFlags(r.typ)
	if !known {
		return errInval, "unknown command"
	}
	if r.flags&^allowed != 0 {
		return errInval, "unsupported command flags"
	}
	writes := r.typ == cmdWrite || r.typ == cmdTrim || r.typ == cmdWriteZeroes
	switch {
	case r.typ == cmdTrim && !c.caps.Trim && !c.caps.ReadOnly,
		r.typ == cmdWriteZeroes && !c.caps.WriteZeroes && !c.caps.ReadOnly:
		return errInval, "command not advertised"
	case r.typ == cmdBlockStatus && !c.metaAlloc:
		return errInval, "no meta context negotiated"
	case r.typ == cmdFlush:
		return 0, ""
	case r.typ == cmdRead && r.length > maxPayload:
		return errOverflow, "read larger than 32 MiB"
	case r.typ == cmdBlockStatus && r.length == 0:
		return errInval, "empty block status request"
	}
	// The size is read for every request: ResizeExport may have grown the
	// export since the connection began, and the kernel, told the new size
	// by RECONFIGURE, sends requests up to it on its old connections.
	end := r.off + uint64(r.length)
	if end < r.off || end > uint64(c.exp.size.Load()) {
		if writes {
			return errNoSpc, "request past the end of the export"
		}
		return errInval, "request past the end of the export"
	}
	if writes && c.caps.ReadOnly {
		return errPerm, "export is read-only"
	}
	return 0, ""
}

// reply sends a simple reply: success, or the error's errno.
func (c *connState) reply(r *request, err error) {
	if err != nil {
		c.replyError(r, errnoOf(err), err.Error())
		return
	}
	c.out.send(r, putSimpleReply(r.hdr[:], 0, r.cookie))
}

// replyError sends an error: a structured error chunk for reads (simple
// replies to a READ would be ambiguous), a simple reply otherwise.
func (c *connState) replyError(r *request, errno uint32, msg string) {
	if c.structured && r.typ == cmdRead {
		r.ext = appendErrorChunk(r.ext[:0], r.cookie, errno, msg)
		c.out.send(r, r.ext)
		return
	}
	c.out.send(r, putSimpleReply(r.hdr[:], errno, r.cookie))
}
