package store

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// internalPrefix starts the names of the internal snapshots the store
// makes; others (an operator's) are never touched.
const internalPrefix = "csi-"

// SnapshotSpec is what CreateSnapshot makes.
type SnapshotSpec struct {
	Name   string
	Volume string // source volume ID
	Type   string // TypeExternal (default) or TypeInternal
}

// Snapshot is a snapshot as the CO sees it.
type Snapshot struct {
	ID      string
	Name    string
	Volume  string
	Type    string
	Size    int64
	Bytes   int64 // what its own layer occupies (external); 0 for internal
	Created time.Time
}

func (s *Store) publicSnapshot(r *snapshotRecord) Snapshot {
	sn := Snapshot{ID: r.ID, Name: r.Name, Volume: r.Volume, Type: r.Type, Size: r.Size, Created: r.Created}
	if r.Type == TypeExternal && len(r.Chain.Layers) > 0 {
		sn.Bytes = s.layerBytes(s.lay.layerPath(r.Chain.Layers[len(r.Chain.Layers)-1]))
	}
	return sn
}

// CreateSnapshot snapshots a volume, or returns the snapshot a call with
// the same spec made before. External: the volume's top is frozen into a
// read-only layer and the volume goes on in a new top (live when served).
// Internal: a qcow2 internal snapshot inside the volume's top.
func (s *Store) CreateSnapshot(ctx context.Context, spec SnapshotSpec) (Snapshot, error) {
	if !s.Ready() {
		return Snapshot{}, ErrNotReady
	}
	if spec.Type == "" {
		spec.Type = TypeExternal
	}
	if spec.Type != TypeExternal && spec.Type != TypeInternal {
		return Snapshot{}, errorf(ErrInvalid, "snapshot type %q is neither %s nor %s", spec.Type, TypeExternal, TypeInternal)
	}
	if err := s.checkID(spec.Volume, volumeKind); err != nil {
		return Snapshot{}, err
	}
	id := s.SnapshotID(spec.Name)
	unlock, err := s.locks.tryLock(id, spec.Volume)
	if err != nil {
		return Snapshot{}, err
	}
	defer unlock()
	s.mu.Lock()
	old := s.snapshots[id]
	s.mu.Unlock()
	if old != nil && old.State == stateReady {
		if old.Volume != spec.Volume || old.Type != spec.Type {
			return Snapshot{}, errorf(ErrExists, "snapshot %q exists for another volume or of another type", spec.Name)
		}
		return s.publicSnapshot(old), nil
	}
	if old != nil {
		if err := s.abandonSnapshot(id); err != nil {
			return Snapshot{}, err
		}
	}
	if err := s.settlePending(spec.Volume); err != nil {
		return Snapshot{}, err
	}
	s.mu.Lock()
	v := s.volumes[spec.Volume]
	s.mu.Unlock()
	if v == nil || v.State != stateReady {
		return Snapshot{}, errorf(ErrNotFound, "volume %s", spec.Volume)
	}
	if spec.Type == TypeInternal {
		return s.createInternal(id, spec, v)
	}
	return s.createExternal(ctx, id, spec, v)
}

func (s *Store) createExternal(ctx context.Context, id string, spec SnapshotSpec, v *volumeRecord) (Snapshot, error) {
	r := &snapshotRecord{ID: id, Name: spec.Name, State: stateCreating, Type: TypeExternal,
		Volume: v.ID, Size: v.Capacity, Created: time.Now().UTC()}
	// In memory only until the freeze is done: the volume's record holds
	// the freeze's intent, and a layer a crash leaves in the volume's
	// chain is harmless.
	s.mu.Lock()
	s.snapshots[id] = r
	s.mu.Unlock()
	chain, err := s.freezeTop(v.ID)
	if err != nil {
		return Snapshot{}, errors.Join(err, s.abandonSnapshot(id))
	}
	if err := s.updateSnapshot(id, func(r *snapshotRecord) {
		r.Chain, r.State = chain, stateReady
	}); err != nil {
		return Snapshot{}, errors.Join(err, s.abandonSnapshot(id))
	}
	s.capDepth(ctx, v.ID)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.publicSnapshot(s.snapshots[id]), nil
}

func (s *Store) createInternal(id string, spec SnapshotSpec, v *volumeRecord) (Snapshot, error) {
	name := internalPrefix + newLayerID()[2:]
	chain := v.Chain.clone()
	chain.Layers = append(chain.Layers, v.Top)
	r := &snapshotRecord{ID: id, Name: spec.Name, State: stateCreating, Type: TypeInternal,
		Volume: v.ID, Size: v.Capacity, Chain: chain, Internal: name, Created: time.Now().UTC()}
	s.mu.Lock()
	err := s.saveSnapshot(r)
	s.mu.Unlock()
	if err != nil {
		return Snapshot{}, err
	}
	named := s.internalNames()
	err = s.withLive(v, func(l *qcow2.Live) error {
		return l.WithImage(func(img *qcow2.Image) error {
			dropOrphanInternals(img, named, s.logf)
			if _, err := img.CreateSnapshot(name); err != nil {
				return err
			}
			step("internal snapshot made")
			return img.Flush()
		})
	})
	if err == nil {
		err = s.updateSnapshot(id, func(r *snapshotRecord) { r.State = stateReady })
	}
	if err != nil {
		return Snapshot{}, errors.Join(err, s.abandonSnapshot(id))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.publicSnapshot(s.snapshots[id]), nil
}

// internalNames are the internal snapshots records name.
func (s *Store) internalNames() map[string]bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]bool{}
	for _, sn := range s.snapshots {
		if sn.Internal != "" {
			out[sn.Internal] = true
		}
	}
	return out
}

// dropOrphanInternals deletes the internal snapshots this store made in
// img that no record names any more: a delete that could not reach the
// image, or a crash between the record and the image. Failures only
// leave them for the next time.
func dropOrphanInternals(img *qcow2.Image, named map[string]bool, logf func(string, ...any)) {
	list, err := img.Snapshots()
	if err != nil {
		return
	}
	for _, in := range list {
		if strings.HasPrefix(in.Name, internalPrefix) && !named[in.Name] {
			if err := img.DeleteSnapshot(in.Name); err != nil {
				logf("freeing orphaned internal snapshot %s: %v", in.Name, err)
				return
			}
		}
	}
}

// abandonSnapshot removes a snapshot record that never became ready.
func (s *Store) abandonSnapshot(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.dropSnapshot(id); err != nil {
		return err
	}
	return s.collect()
}

// DeleteSnapshot removes snapshot id. An internal snapshot in the top of
// its volume is deleted from the image too (its clusters are freed); one
// in a frozen layer stays there, unread, until the layer goes.
func (s *Store) DeleteSnapshot(id string) error {
	if err := s.checkID(id, snapshotKind); err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		return err
	}
	unlock, err := s.locks.tryLock(id)
	if err != nil {
		return err
	}
	defer unlock()
	s.mu.Lock()
	r := s.snapshots[id]
	if r == nil {
		s.mu.Unlock()
		return nil
	}
	err = s.dropSnapshot(id)
	if err == nil {
		err = s.collect()
	}
	s.mu.Unlock()
	if err != nil {
		return err
	}
	if r.Type == TypeInternal && r.State == stateReady {
		s.dropInternal(r)
	}
	return nil
}

// dropInternal deletes r's internal snapshot from its volume's top, if
// the file is still that top and the volume is not busy; otherwise the
// snapshot stays in the file, unreferenced, until the file goes.
func (s *Store) dropInternal(r *snapshotRecord) {
	unlock, err := s.locks.tryLock(r.Volume)
	if err != nil {
		return
	}
	defer unlock()
	s.mu.Lock()
	v := s.volumes[r.Volume]
	s.mu.Unlock()
	file := r.Chain.Layers[len(r.Chain.Layers)-1]
	if v == nil || v.Top != file || v.Pending != nil {
		return
	}
	err = s.withLive(v, func(l *qcow2.Live) error {
		return l.WithImage(func(img *qcow2.Image) error {
			if err := img.DeleteSnapshot(r.Internal); err != nil {
				return err
			}
			return img.Flush()
		})
	})
	if err != nil {
		s.logf("snapshot %s: freeing internal snapshot %s in volume %s: %v", r.ID, r.Internal, v.ID, err)
	}
}

// readySnapshot returns the record of a ready snapshot.
func (s *Store) readySnapshot(id string) (*snapshotRecord, error) {
	if err := s.checkID(id, snapshotKind); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.snapshots[id]
	if r == nil || r.State != stateReady {
		return nil, errorf(ErrNotFound, "snapshot %s", id)
	}
	return r, nil
}

// GetSnapshot returns snapshot id.
func (s *Store) GetSnapshot(id string) (Snapshot, error) {
	r, err := s.readySnapshot(id)
	if err != nil {
		return Snapshot{}, err
	}
	return s.publicSnapshot(r), nil
}

// ListSnapshots returns the ready snapshots, sorted by ID.
func (s *Store) ListSnapshots() []Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Snapshot
	for _, r := range s.sortedSnapshots() {
		out = append(out, s.publicSnapshot(r))
	}
	return out
}
