package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// freezeTop turns volume id's top into a new frozen layer, live when the
// volume is served, and returns the volume's chain then: it ends with
// the new layer. The layer is in the volume's record (Pending) before
// the engine makes it, so a crash at any instant is settled by
// settlePending. The caller records what reads the layer and then calls
// capDepth. The caller holds id's lock.
func (s *Store) freezeTop(id string) (Chain, error) {
	if err := s.settlePending(id); err != nil {
		return Chain{}, err
	}
	s.mu.Lock()
	v, ok := s.volumes[id]
	s.mu.Unlock()
	if !ok || v.State != stateReady {
		return Chain{}, errorf(ErrNotFound, "volume %s", id)
	}
	// A merge that failed before is tried again first, so that the chain
	// never grows to the engine's own bound.
	s.capDepth(context.Background(), id)
	s.mu.Lock()
	v = s.volumes[id]
	s.mu.Unlock()
	layer := newLayerID()
	if err := s.updateVolume(id, func(r *volumeRecord) { r.Pending = &pending{Op: opFreeze, Layer: layer} }); err != nil {
		return Chain{}, err
	}
	ferr := s.withLive(v, func(l *qcow2.Live) error { return l.Freeze(s.lay.layerPath(layer)) })
	step("frozen")
	if err := s.settlePending(id); err != nil {
		return Chain{}, errors.Join(ferr, err)
	}
	s.mu.Lock()
	v = s.volumes[id]
	s.mu.Unlock()
	if !containsLayer(v.Chain, layer) {
		return Chain{}, fmt.Errorf("freezing volume %s: %w", id, ferr)
	}
	return v.Chain.clone(), nil
}

// capDepth merges volume id's chain when it is past the cap. A failed
// merge is logged, not returned: what asked for the freeze stands, and a
// later freeze merges. The merge is not cancelled with the RPC that
// started it: a CO's deadline would otherwise stop every merge of a large
// chain, each later snapshot adding a file. The caller holds id's lock.
func (s *Store) capDepth(ctx context.Context, id string) {
	ctx = context.WithoutCancel(ctx)
	s.mu.Lock()
	v := s.volumes[id]
	s.mu.Unlock()
	if v == nil || v.Chain.depth()+1 <= s.cfg.MaxChainDepth {
		return
	}
	if err := s.collapseTop(ctx, id); err != nil {
		s.logf("volume %s: merging its chain of %d files: %v", id, v.Chain.depth()+1, err)
	}
}

func containsLayer(c Chain, layer string) bool {
	for _, l := range c.Layers {
		if l == layer {
			return true
		}
	}
	return false
}
