package nbdattach

import (
	"encoding/binary"
	"net"
	"sync"
)

// replyWriter serializes replies on the socket. Workers hand it finished
// replies; whichever worker finds the socket idle becomes the writer and
// sends everything queued meanwhile in one writev, so replies that finish
// together share a system call and no goroutine switch is added at queue
// depth 1. Replies of requests the request reader ran itself (inline) only
// queue, up to maxBatchReplies or maxBatchBytes: the reader sends them
// (flush) before it waits for the socket or the in-flight budget, and a
// timer sends them when a request the reader runs keeps them waiting for
// maxReplyHold (a lock, a sync), so a reply is not held back while the
// server waits.
type replyWriter struct {
	conn   net.Conn
	finish func(*request) // returns a request's buffers once it is sent

	mu      sync.Mutex
	writing bool
	err     error
	bufs    net.Buffers
	reqs    []*request
	queued  int // bytes in bufs
	spareB  net.Buffers
	spareR  []*request
}

// The most replies, and reply bytes, the request reader lets wait for a
// flush: enough to share one writev among a queue depth of 32 small
// requests, little enough that a reply does not wait behind many others.
const (
	maxBatchReplies = 32
	maxBatchBytes   = 256 << 10
)

// send queues r's reply (bufs reference r's own memory) and writes it,
// with whatever else is queued, unless another worker is writing or r
// runs inline and the batch has room.
func (w *replyWriter) send(r *request, bufs ...[]byte) {
	w.mu.Lock()
	if w.err != nil {
		w.mu.Unlock()
		w.finish(r)
		return
	}
	w.bufs = append(w.bufs, bufs...)
	w.reqs = append(w.reqs, r)
	for _, b := range bufs {
		w.queued += len(b)
	}
	if w.writing || r.inline && len(w.reqs) < maxBatchReplies && w.queued < maxBatchBytes {
		w.mu.Unlock()
		return
	}
	w.drain()
}

// pending reports whether replies wait in the queue for a flush (not
// for a worker that is writing: it sends them).
func (w *replyWriter) pending() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.reqs) > 0 && !w.writing
}

// flush sends the queued replies unless a worker is sending already (it
// sends them too). Any goroutine may call it at any time: the request
// reader, or the timer that bounds how long a reply is held (runInline).
func (w *replyWriter) flush() {
	w.mu.Lock()
	if w.writing || len(w.reqs) == 0 {
		w.mu.Unlock()
		return
	}
	w.drain()
}

// drain writes what is queued until the queue is empty; it is called with
// w.mu held and returns with it released.
func (w *replyWriter) drain() {
	w.writing = true
	for len(w.reqs) > 0 && w.err == nil {
		bufs, reqs := w.bufs, w.reqs
		w.bufs, w.reqs, w.queued = w.spareB[:0], w.spareR[:0], 0
		w.mu.Unlock()

		out := bufs // WriteTo consumes its receiver
		_, err := out.WriteTo(w.conn)
		for i, r := range reqs {
			w.finish(r)
			reqs[i] = nil
		}
		clear(bufs)

		w.mu.Lock()
		w.spareB, w.spareR = bufs[:0], reqs[:0]
		if err != nil {
			w.err = err
			// Unblocks the request reader: the connection is lost.
			w.conn.Close()
		}
	}
	// After a failure, drop what was queued meanwhile.
	for _, r := range w.reqs {
		w.finish(r)
	}
	w.bufs, w.reqs, w.queued = w.bufs[:0], w.reqs[:0], 0
	w.writing = false
	w.mu.Unlock()
}

// failed reports the first write error.
func (w *replyWriter) failed() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// putSimpleReply encodes a simple reply header into b (16 bytes).
func putSimpleReply(b []byte, errno uint32, cookie uint64) []byte {
	binary.BigEndian.PutUint32(b[0:], magicSimpleReply)
	binary.BigEndian.PutUint32(b[4:], errno)
	binary.BigEndian.PutUint64(b[8:], cookie)
	return b[:simpleReplySize]
}

// appendChunkHeader appends a structured reply chunk header.
func appendChunkHeader(b []byte, flags, typ uint16, cookie uint64, length uint32) []byte {
	b = binary.BigEndian.AppendUint32(b, magicStructReply)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	return binary.BigEndian.AppendUint32(b, length)
}

// maxErrorMessage bounds the human-readable text of an error chunk.
const maxErrorMessage = 512

// appendErrorChunk appends a final NBD_REPLY_TYPE_ERROR chunk.
func appendErrorChunk(b []byte, cookie uint64, errno uint32, msg string) []byte {
	if len(msg) > maxErrorMessage {
		msg = msg[:maxErrorMessage]
	}
	b = appendChunkHeader(b, replyFlagDone, replyError, cookie, uint32(6+len(msg)))
	b = binary.BigEndian.AppendUint32(b, errno)
	b = binary.BigEndian.AppendUint16(b, uint16(len(msg)))
	return append(b, msg...)
}
