package store

import (
	"fmt"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// ExpandVolume grows volume id to size bytes (a multiple of 512), live
// when it is served, and records the new size. Shrinking is refused; a
// size already reached is done. The node service calls it from
// NodeExpandVolume and then grows the attached device and filesystem.
// The record says what is being done first (Pending), so a crash between
// the image's header and the record is settled from the header.
func (s *Store) ExpandVolume(id string, size int64) (Volume, error) {
	if err := s.checkID(id, volumeKind); err != nil {
		return Volume{}, err
	}
	if size <= 0 || size%512 != 0 {
		return Volume{}, errorf(ErrInvalid, "size %d is not a positive multiple of 512 bytes", size)
	}
	unlock, err := s.locks.tryLock(id)
	if err != nil {
		return Volume{}, err
	}
	defer unlock()
	if err := s.settlePending(id); err != nil {
		return Volume{}, err
	}
	s.mu.Lock()
	v := s.volumes[id]
	s.mu.Unlock()
	switch {
	case v == nil || v.State != stateReady:
		return Volume{}, errorf(ErrNotFound, "volume %s", id)
	case size < v.Capacity:
		return Volume{}, errorf(ErrRange, "volume %s is %d bytes: it cannot shrink to %d", id, v.Capacity, size)
	case size == v.Capacity:
		return s.publicVolumeOf(id), nil
	}
	if err := s.updateVolume(id, func(r *volumeRecord) { r.Pending = &pending{Op: opExpand, Size: size} }); err != nil {
		return Volume{}, err
	}
	rerr := s.withLive(v, func(l *qcow2.Live) error { return l.Resize(size) })
	step("expanded")
	if err := s.settlePending(id); err != nil {
		return Volume{}, err
	}
	if rerr != nil {
		return Volume{}, fmt.Errorf("growing volume %s: %w", id, rerr)
	}
	return s.publicVolumeOf(id), nil
}

// settleExpand takes the volume's size from its top's header.
func (s *Store) settleExpand(v *volumeRecord) error {
	hdr, err := s.topHeader(v)
	if err != nil {
		return fmt.Errorf("volume %s: settling an expansion: %w", v.ID, err)
	}
	return s.updateVolume(v.ID, func(r *volumeRecord) {
		r.Capacity = max(r.Capacity, int64(hdr.Size))
		r.Pending = nil
	})
}

func (s *Store) publicVolumeOf(id string) Volume {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.publicVolume(s.volumes[id])
}
