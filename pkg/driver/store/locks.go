package store

import "sync"

// idLocks are per-object try-locks: a second operation on an object that
// one is already changing is refused (ErrBusy, gRPC Aborted, which the CO
// retries) instead of queueing behind it, as the CSI spec asks.
type idLocks struct {
	mu   sync.Mutex
	held map[string]struct{}
}

// tryLock takes every id or none; unlock releases them.
func (l *idLocks) tryLock(ids ...string) (unlock func(), err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held == nil {
		l.held = map[string]struct{}{}
	}
	for _, id := range ids {
		if _, busy := l.held[id]; busy {
			return nil, errorf(ErrBusy, "%s", id)
		}
	}
	for _, id := range ids {
		l.held[id] = struct{}{}
	}
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		for _, id := range ids {
			delete(l.held, id)
		}
	}, nil
}
