package golden

import (
	"context"
)

// flight is one running import of a SHA-256, shared by every caller
// that asks for it meanwhile.
type flight struct {
	done    chan struct{} // closed when the import has ended and cleaned up
	waiters int           // callers waiting; the last to leave cancels
	cancel  context.CancelFunc
	path    string
	info    Info
	err     error
}

// join waits for the import of src, starting it unless one is running.
// The import runs on its own goroutine under a context of its own (the
// first caller's values, none of its cancellation), cancelled when the
// last waiter gives up; that waiter then waits for its cleanup, so that
// when every caller has returned nothing of it is left behind.
func (im *Importer) join(ctx context.Context, src Source, loc location) (string, Info, error) {
	sha := src.SHA256
	im.mu.Lock()
	if im.flights == nil {
		im.flights = map[string]*flight{}
	}
	f := im.flights[sha]
	if f == nil {
		fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		f = &flight{done: make(chan struct{}), cancel: cancel}
		im.flights[sha] = f
		go func() {
			f.path, f.info, f.err = im.run(fctx, src, loc)
			cancel()
			im.mu.Lock()
			if im.flights[sha] == f {
				delete(im.flights, sha)
			}
			im.mu.Unlock()
			close(f.done)
		}()
	}
	f.waiters++
	im.mu.Unlock()

	select {
	case <-f.done:
		return f.path, f.info, f.err
	case <-ctx.Done():
	}
	im.mu.Lock()
	f.waiters--
	last := f.waiters == 0
	if last {
		// A caller arriving from now on starts afresh rather than join
		// an import that is being cancelled.
		if im.flights[sha] == f {
			delete(im.flights, sha)
		}
		f.cancel()
	}
	im.mu.Unlock()
	if last {
		<-f.done
		if f.err == nil { // it was done before it saw the cancel
			return f.path, f.info, nil
		}
	}
	return "", Info{}, ctx.Err()
}
