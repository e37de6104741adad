package main

import "sync"

// pipeline runs convert's requests on several workers, like qemu-img
// convert's coroutines (-m): each request is prepared (read, zero-tested,
// compressed) concurrently, then committed (written). Commits run in
// request order unless outOfOrder (-W), so that a qcow2 output allocates
// its clusters in guest order.
type pipeline struct {
	workers    int
	outOfOrder bool
}

// stage prepares request i in the worker's own scratch space and returns
// the commit that finishes it (nil: nothing to commit). A commit may use
// the scratch space: the worker starts its next request only after it.
type stage func(i int, scratch *[]byte) (commit func() error, err error)

// run processes requests 0..n-1 and returns the first error; after an
// error no new request starts and no further commit runs.
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
