package nbdattach

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
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
	// inline: the request reader runs the request and its reply waits in
	// the reply queue until the reader flushes it (replyWriter).
	inline bool
	// nowait: a READ the reader tries with the backend's ReadAtNoWait.
	nowait bool
	hdr    [64]byte
	ext    []byte // reply bytes that do not fit hdr (chunks, descriptors)
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
	c.nowaitReader, _ = exp.Backend.(NoWaitReader)
	c.caps = exp.caps
	c.out.finish = c.finish
	err := c.srv.catch("reading requests", c.readRequests)
	if c.holdTimer != nil {
		c.holdTimer.Stop() // armed still if a panic left a request
	}
	if err != nil {
		// A broken or hostile client: do not wait on replies it may never
		// read; closing fails the pending writes and frees the workers.
		c.nc.Close()
	}
	// Replies of inline requests still queued go out now (after DISC or
	// EOF), or are dropped on the closed socket.
	c.out.flush()
	c.limit.wait()
	c.nc.Close()
	if werr := c.out.failed(); err == nil && werr != nil && !errors.Is(werr, net.ErrClosed) {
		err = werr
	}
	return err
}

// readRequests reads requests and runs each, itself or in a new
// goroutine, until NBD_CMD_DISC, EOF or a protocol violation. Replies of
// the requests it runs itself are flushed before every read that may
// wait for the client, and before it waits for the in-flight budget.
func (c *connState) readRequests() error {
	var h [requestSize]byte
	for {
		if c.br.Buffered() < requestSize {
			c.out.flush()
		}
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
				c.acquire(0)
				c.replyError(r, errOverflow, "write larger than 32 MiB")
				return fmt.Errorf("nbd: write of %d bytes exceeds the %d byte limit", r.length, maxPayload)
			}
			r.held = int64(r.length)
			c.acquire(r.held)
			r.buf = getBuf(int(r.length))
			if c.br.Buffered() < int(r.length) {
				c.out.flush()
			}
			if _, err := io.ReadFull(c.br, *r.buf); err != nil {
				c.finish(r)
				return fmt.Errorf("nbd: reading write payload: %w", err)
			}
		case cmdRead:
			r.held = int64(min(r.length, maxPayload))
			c.acquire(r.held)
		case cmdCache:
			r.held = int64(min(r.length, cacheChunk))
			c.acquire(r.held)
		case cmdBlockStatus:
			r.held = blockStatusHeld(r.length)
			c.acquire(r.held)
		default:
			c.acquire(0)
		}
		if c.inline(r) {
			r.inline = true
			c.runInline(r)
		} else {
			go c.handle(r)
		}
	}
}

// acquire takes n bytes of the in-flight budget and a request slot; when
// it has to wait for replies to be sent, the queued ones go first.
func (c *connState) acquire(n int64) {
	if !c.limit.tryAcquire(n) {
		c.out.flush()
		c.limit.acquire(n)
	}
}

// maxInlineLen is the largest READ or WRITE the reader runs itself at
// queue depths above 1: copying more takes long enough that a goroutine's
// wake-up costs little in comparison, and the reader would not read the
// socket meanwhile.
const maxInlineLen = 128 << 10

// Inline WRITEs at queue depths above 1, which may wait for the disk, are
// timed: one that took more than
// slowInline means the disk or a lock is slow right now, and for the next
// inlineBackoff (doubling while probes stay slow, up to maxInlineBackoff)
// such requests get goroutines again, so that the reader keeps reading
// while they wait.
const (
	slowInline       = 500 * time.Microsecond
	minInlineBackoff = 10 * time.Millisecond
	maxInlineBackoff = time.Second
)

// inline reports whether the reader should run r itself instead of in a
// new goroutine, which costs a wake-up on another thread and, for a deep
// stack like the engine's, a stack growth:
//   - at queue depth 1 (r is the only request in flight and no other one
//     has arrived yet), any request but those below;
//   - small READs from a backend with ReadAtNoWait, which either find
//     their data in memory at once or fall back to a goroutine
//     (runInline);
//   - small WRITEs, unless one was slow lately.
//
// A READ that may wait (ReadAt) never runs on the reader at depths above
// 1: reads are what a client issues many of at once, and each would wait
// for the disk with the reader, one after the other. Flushes and FUA
// requests wait on the disk, so they always get their own goroutine:
// requests that arrive meanwhile are read at once.
func (c *connState) inline(r *request) bool {
	if r.typ == cmdFlush || r.flags&cflagFUA != 0 {
		return false
	}
	if c.br.Buffered() == 0 && c.limit.alone() {
		return true
	}
	if (r.typ != cmdRead && r.typ != cmdWrite) || r.length > maxInlineLen {
		return false
	}
	if r.typ == cmdRead {
		r.nowait = c.nowaitReader != nil && !c.nowaitOff
		return r.nowait
	}
	return c.slowUntil.IsZero() || time.Now().After(c.slowUntil)
}

// maxReplyHold bounds how long replies already queued wait while the
// reader runs a request that may wait (a WRITE, or any request at depth
// 1): after it, a timer sends them, however long the request takes. Far
// more than a request served from memory takes, so that a batch still
// shares one writev; far less than a request waiting for a lock or a
// sync.
const maxReplyHold = 250 * time.Microsecond

// runInline runs r on the reader. A READ with r.nowait either finds its
// data at once or moves to a goroutine (doRead); any other request may
// wait and is timed (see slowInline), and the replies queued before it
// wait for it at most maxReplyHold.
func (c *connState) runInline(r *request) {
	if r.nowait {
		c.handle(r)
		return
	}
	hold := c.out.pending()
	if hold {
		c.armHoldTimer()
	}
	start := time.Now()
	c.handle(r)
	if hold {
		c.holdTimer.Stop()
	}
	if d := time.Since(start); d > slowInline {
		c.backoff = min(max(2*c.backoff, minInlineBackoff), maxInlineBackoff)
		c.slowUntil = time.Now().Add(c.backoff)
	} else {
		c.backoff = 0
	}
}

// armHoldTimer starts the connection's timer that flushes the reply
// queue after maxReplyHold. It is made once per connection and reused,
// so that a request costs no goroutine nor allocation. The flush may run
// after the request returned, or while the reader flushes itself: the
// reply writer serializes flushes (replyWriter.flush).
func (c *connState) armHoldTimer() {
	if c.holdTimer == nil {
		c.holdTimer = time.AfterFunc(maxReplyHold, c.out.flush)
		return
	}
	c.holdTimer.Reset(maxReplyHold)
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
