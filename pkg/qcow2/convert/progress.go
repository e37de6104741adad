package convert

import "sync"

// progress counts the guest bytes a copy has done and reports them to
// Options.Progress, one call at a time (the workers commit concurrently
// when writes may run out of order).
type progress struct {
	mu       sync.Mutex
	report   func(done, total int64) // nil: count only
	done     int64
	total    int64
	reported int64 // done at the last call, -1 before the first
}

func newProgress(report func(done, total int64), total int64) *progress {
	return &progress{report: report, total: total, reported: -1}
}

// add records n more bytes done.
func (p *progress) add(n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done = min(p.done+n, p.total)
	p.call()
}

// finish reports the whole copy done: a copy that succeeded covered every
// byte, and the caller hears total even if nothing needed copying.
func (p *progress) finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done = p.total
	p.call()
}

// call reports done unless it was reported already; p.mu is held.
func (p *progress) call() {
	if p.report == nil || p.done == p.reported {
		return
	}
	p.reported = p.done
	p.report(p.done, p.total)
}
