package nbdattach

import "sync"

// inflight bounds what one connection holds at once: bytes of payload and
// read buffers, and requests. The reader waits in acquire, which stops it
// from reading more requests off the socket (backpressure on the client).
type inflight struct {
	mu       sync.Mutex
	cond     sync.Cond
	maxBytes int64
	maxReqs  int
	bytes    int64
	reqs     int
	waiting  bool // the reader waits in acquire
}

func (f *inflight) init(maxBytes int64, maxReqs int) {
	f.cond.L = &f.mu
	f.maxBytes, f.maxReqs = maxBytes, maxReqs
}

// acquire takes n bytes and one request slot. n must not exceed maxBytes;
// an idle connection always gets its request in.
func (f *inflight) acquire(n int64) {
	f.mu.Lock()
	for f.reqs > 0 && (f.bytes+n > f.maxBytes || f.reqs >= f.maxReqs) {
		f.waiting = true
		f.cond.Wait()
	}
	f.waiting = false
	f.bytes += n
	f.reqs++
	f.mu.Unlock()
}

// tryAcquire takes n bytes and one request slot if that needs no wait.
func (f *inflight) tryAcquire(n int64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.reqs > 0 && (f.bytes+n > f.maxBytes || f.reqs >= f.maxReqs) {
		return false
	}
	f.bytes += n
	f.reqs++
	return true
}

func (f *inflight) release(n int64) {
	f.mu.Lock()
	f.bytes -= n
	f.reqs--
	f.mu.Unlock()
	f.cond.Signal()
}

// alone reports whether exactly one request is in flight.
func (f *inflight) alone() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reqs == 1
}

// wait blocks until no request is in flight.
func (f *inflight) wait() {
	f.mu.Lock()
	for f.reqs > 0 {
		f.cond.Wait()
	}
	f.mu.Unlock()
}

// full reports whether the reader waits for the budget.
func (f *inflight) full() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.waiting
}
