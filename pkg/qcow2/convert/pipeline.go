package convert

import (
	"context"
	"sync"
)

// pipeline runs a copy's requests on several workers, like qemu-img
// convert's coroutines (-m): each request is prepared (read, zero-tested,
// compressed) concurrently, then committed (written). Commits run in
// request order unless outOfOrder (-W), so that a qcow2 target allocates
// its clusters in guest order.
type pipeline struct {
	ctx        context.Context // nil: never cancelled
	workers    int
	outOfOrder bool
}

// stage prepares request i in the worker's own scratch space and returns
// the commit that finishes it (nil: nothing to commit). A commit may use
// the scratch space: the worker starts its next request only after it.
type stage func(i int, scratch *[]byte) (commit func() error, err error)

// cancelled returns the context's error once it is done.
func (p pipeline) cancelled() error {
	if p.ctx == nil {
		return nil
	}
	return p.ctx.Err()
}

// run processes requests 0..n-1 and returns the first error; after an
// error no new request starts and no further commit runs. A cancelled
// context is such an error, seen before each request and each commit: a
// cancelled run stops once the commits already running end (at most one
// per worker), and returns the context's error.
func (p pipeline) run(n int, prepare stage) error {
	var (
		mu      sync.Mutex
		turn    = sync.NewCond(&mu)
		next    int   // next request to hand out
		done    int   // requests committed, in order (in-order mode)
		failErr error // first error
	)
	fail := func(err error) {
		if failErr == nil {
			failErr = err
		}
		turn.Broadcast()
	}
	worker := func() {
		var scratch []byte
		for {
			mu.Lock()
			if err := p.cancelled(); err != nil {
				fail(err)
			}
			if failErr != nil || next >= n {
				mu.Unlock()
				return
			}
			i := next
			next++
			mu.Unlock()

			commit, err := prepare(i, &scratch)
			mu.Lock()
			if err != nil {
				fail(err)
				mu.Unlock()
				return
			}
			if !p.outOfOrder {
				for done != i && failErr == nil {
					turn.Wait()
				}
			}
			if err := p.cancelled(); err != nil {
				fail(err)
			}
			if failErr != nil {
				mu.Unlock()
				return
			}
			// In order, only the worker holding request done commits;
			// out of order, commits run concurrently.
			mu.Unlock()
			if commit != nil {
				err = commit()
			}
			mu.Lock()
			if err != nil {
				fail(err)
				mu.Unlock()
				return
			}
			done++
			turn.Broadcast()
			mu.Unlock()
		}
	}
	var wg sync.WaitGroup
	for range max(1, min(p.workers, n)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			worker()
		}()
	}
	wg.Wait()
	return failErr
}
