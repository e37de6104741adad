package store

import (
	"context"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// collapseTop merges the newest frozen layers of volume id into its top,
// live, until its chain holds half the cap: the engine copies what those
// layers hold into the top and then switches the top's backing file
// (qcow2.Live.Collapse, crash-tested there). The layers stay while
// snapshots read them. The record says what is being merged (Pending)
// before the switch can happen, so settleCollapse finds the chain after
// a crash. The caller holds id's lock.
func (s *Store) collapseTop(ctx context.Context, id string) error {
	s.mu.Lock()
	v := s.volumes[id]
	s.mu.Unlock()
	keep := max(1, s.cfg.MaxChainDepth/2)
	files := s.files(v.Chain)
	if len(files) <= keep {
		return nil
	}
	if err := s.updateVolume(id, func(r *volumeRecord) { r.Pending = &pending{Op: opCollapse, Keep: keep} }); err != nil {
		return err
	}
	_, cerr := s.collapseLive(ctx, v, files[keep-1])
	step("collapsed")
	if err := s.settlePending(id); err != nil {
		return err
	}
	if cerr != nil {
		return cerr
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.collect()
}

func (s *Store) collapseLive(ctx context.Context, v *volumeRecord, base string) (dropped []string, err error) {
	err = s.withLive(v, func(l *qcow2.Live) error {
		dropped, err = l.Collapse(ctx, qcow2.CollapseOptions{Base: base,
			Progress: func(qcow2.CollapseProgress) { step("collapse copying") }})
		return err
	})
	return dropped, err
}
