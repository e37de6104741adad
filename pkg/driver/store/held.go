package store

import (
	"errors"
	"fmt"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// heldVolume is a volume open for serving (the node service's export):
// snapshots and clones of it go through this handle, live.
type heldVolume struct {
	live *qcow2.Live
	refs int
}

// topOptions opens the writable top of v: exactly its chain's files may
// be opened below it, and the write journal is on (it is replayed here
// after a crash whichever way the top was opened before).
func (s *Store) topOptions(v *volumeRecord) qcow2.Options {
	return qcow2.Options{Backing: s.policy(v.Chain), Journal: true}
}

// Hold opens volume id for serving and returns its live handle; every
// Hold is paired with a call of release. A held volume cannot be deleted
// (ErrInUse); snapshots and clones of it are taken live.
func (s *Store) Hold(id string) (live *qcow2.Live, release func() error, err error) {
	if err := s.checkID(id, volumeKind); err != nil {
		return nil, nil, err
	}
	unlock, err := s.locks.tryLock(id)
	if err != nil {
		return nil, nil, err
	}
	defer unlock()
	// A freeze or merge whose record could not be settled leaves a top
	// that names a layer its recorded chain lacks (or the other way).
	if err := s.settlePending(id); err != nil {
		return nil, nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.volumes[id]
	if !ok || v.State != stateReady {
		return nil, nil, errorf(ErrNotFound, "volume %s", id)
	}
	h := s.held[id]
	if h == nil {
		l, err := qcow2.OpenLive(s.lay.layerPath(v.Top), s.topOptions(v))
		if err != nil {
			s.noteFault(id, err)
			return nil, nil, fmt.Errorf("opening volume %s: %w", id, err)
		}
		s.clearOpenFault(id)
		h = &heldVolume{live: l}
		s.held[id] = h
	}
	h.refs++
	released := false
	return h.live, func() error {
		s.mu.Lock()
		if released {
			s.mu.Unlock()
			return nil
		}
		released = true
		if h.refs--; h.refs > 0 {
			s.mu.Unlock()
			return nil
		}
		delete(s.held, id)
		s.mu.Unlock()
		// Close waits for what runs on the handle (a restore's copy):
		// not under s.mu, which every call of the store takes.
		return h.live.Close()
	}, nil
}

// withLive runs fn on volume v's live handle: the held one when the
// volume is served, else one opened for fn alone. The caller holds v's
// ID lock, so no one else opens it meanwhile.
func (s *Store) withLive(v *volumeRecord, fn func(l *qcow2.Live) error) error {
	s.mu.Lock()
	h := s.held[v.ID]
	s.mu.Unlock()
	if h != nil {
		return fn(h.live)
	}
	l, err := qcow2.OpenLive(s.lay.layerPath(v.Top), s.topOptions(v))
	if err != nil {
		s.mu.Lock()
		s.noteFault(v.ID, err)
		s.mu.Unlock()
		return fmt.Errorf("opening volume %s: %w", v.ID, err)
	}
	s.mu.Lock()
	s.clearOpenFault(v.ID)
	s.mu.Unlock()
	err = fn(l)
	return errors.Join(err, l.Close())
}

// clearOpenFault forgets a failure to open volume id once it opens; a
// check's finding stays. s.mu held.
func (s *Store) clearOpenFault(id string) {
	if s.faults[id].Reason == ReasonFailed {
		delete(s.faults, id)
	}
}

// noteFault remembers why volume id could not be used, for its health;
// s.mu held.
func (s *Store) noteFault(id string, err error) {
	if errors.Is(err, qcow2.ErrCorrupt) || errors.Is(err, qcow2.ErrInvalid) || errors.Is(err, qcow2.ErrPolicy) {
		s.faults[id] = Condition{Abnormal: true, Reason: ReasonFailed, Message: err.Error()}
	}
}
