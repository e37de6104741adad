package store

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/csi-qcow2/csi-qcow2/internal/durable"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// VolumeSpec is what CreateVolume makes. At most one of Image and Source
// is set.
type VolumeSpec struct {
	Name     string
	Capacity int64 // bytes, a multiple of 512; 0 takes the source's size
	Limit    int64 // if not 0, the most bytes the volume may have
	// Params are kept to tell a retry (same) from a clash (other).
	Params map[string]string
	Image  *ImageRef
	Source *Source // a snapshot or a volume (a clone)
}

// ImageRef names a golden image.
type ImageRef struct{ URL, SHA256 string }

// Volume is a volume as the CO sees it.
type Volume struct {
	ID       string
	Name     string
	Capacity int64
	Source   *Source
	Image    string // sha256 of its golden image, if any
	Depth    int    // files in its chain, top included
	TopBytes int64  // what its writable top occupies on disk
	Created  time.Time
}

func (s *Store) publicVolume(r *volumeRecord) Volume {
	v := r.public()
	v.TopBytes = s.layerBytes(s.lay.layerPath(r.Top))
	return v
}

func (r *volumeRecord) public() Volume {
	var src *Source
	if r.Source != nil {
		c := *r.Source
		src = &c
	}
	return Volume{ID: r.ID, Name: r.Name, Capacity: r.Capacity, Source: src,
		Image: r.Chain.Image, Depth: r.Chain.depth() + 1, Created: r.Created}
}

// CreateVolume makes the volume spec names, or returns it if a call with
// the same spec made it before. A volume from an image, a snapshot or a
// volume is a new empty top over the source's chain (a clone freezes the
// source's top first, live if it is served); only a restore from an
// internal snapshot copies, the first time, the data the snapshot holds
// (materialize).
func (s *Store) CreateVolume(ctx context.Context, spec VolumeSpec) (Volume, error) {
	if !s.Ready() {
		return Volume{}, ErrNotReady
	}
	if spec.Capacity < 0 || spec.Capacity%512 != 0 {
		return Volume{}, errorf(ErrInvalid, "capacity %d is not a multiple of 512 bytes", spec.Capacity)
	}
	id := s.VolumeID(spec.Name)
	lockIDs := []string{id}
	if spec.Source != nil {
		lockIDs = append(lockIDs, spec.Source.ID)
		if v := s.internalSnapshotVolume(spec.Source); v != "" {
			// The copy reads the volume's top, through its live handle
			// when it is served: no freeze or merge may switch that top
			// meanwhile (it would also wait for the copy, holding back
			// the guest's I/O).
			lockIDs = append(lockIDs, v)
		}
	}
	unlock, err := s.locks.tryLock(lockIDs...)
	if err != nil {
		return Volume{}, err
	}
	defer unlock()
	if v, done, err := s.existingVolume(id, spec); done {
		return v, err
	}
	// The size is settled before anything changes: a clone that cannot be
	// made must not freeze its source.
	size, err := s.sourceSize(ctx, spec)
	if err != nil {
		return Volume{}, err
	}
	capacity, err := fitCapacity(spec, size)
	if err != nil {
		return Volume{}, err
	}
	chain, err := s.sourceChain(ctx, spec)
	if spec.Source != nil && spec.Source.Kind == SourceVolume {
		// A merge must not be missed whatever happens after the freeze;
		// it outlives the RPC's deadline (capDepth).
		defer s.capDepth(ctx, spec.Source.ID)
	}
	if err != nil {
		return Volume{}, err
	}
	source := spec.Source
	if spec.Image != nil {
		source = &Source{Kind: SourceImage, ID: spec.Image.SHA256}
	}
	r := &volumeRecord{ID: id, Name: spec.Name, State: stateCreating, Capacity: capacity,
		Params: maps.Clone(spec.Params), Source: source, Chain: chain, Top: newLayerID(),
		Created: time.Now().UTC()}
	// The record in memory keeps the collection off the new top while it
	// is made; on disk nothing is needed before the ready record: a top
	// a crash leaves unnamed is collected at the next Open.
	s.mu.Lock()
	s.volumes[id] = r
	s.mu.Unlock()
	if err := s.makeTop(r); err != nil {
		return Volume{}, errors.Join(err, s.abandonVolume(id))
	}
	if err := s.updateVolume(id, func(r *volumeRecord) { r.State = stateReady }); err != nil {
		return Volume{}, errors.Join(err, s.abandonVolume(id))
	}
	// A volume over a snapshot of a restore (of a restore...) is one file
	// deeper each generation: past the cap, its own top takes the layers
	// over (the snapshots keep theirs).
	s.capDepth(ctx, id)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.publicVolume(s.volumes[id]), nil
}

// fitCapacity picks a new volume's size: the one asked for, or the
// source's; never less than the source's nor more than the limit.
func fitCapacity(spec VolumeSpec, size int64) (int64, error) {
	capacity := spec.Capacity
	if capacity == 0 {
		capacity = size
	}
	switch {
	case capacity == 0:
		return 0, errorf(ErrInvalid, "an empty volume needs a capacity")
	case capacity < size:
		return 0, errorf(ErrRange, "capacity %d is smaller than the source's %d bytes", capacity, size)
	case spec.Limit > 0 && capacity > spec.Limit:
		return 0, errorf(ErrRange, "the source's %d bytes are more than the limit of %d", capacity, spec.Limit)
	}
	return capacity, nil
}

// internalSnapshotVolume names the volume a restore from an internal
// snapshot reads from, or "".
func (s *Store) internalSnapshotVolume(src *Source) string {
	if src.Kind != SourceSnapshot {
		return ""
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if sn := s.snapshots[src.ID]; sn != nil && sn.Type == TypeInternal {
		return sn.Volume
	}
	return ""
}

// existingVolume answers a CreateVolume whose name is taken: the same spec
// gets the volume, another gets ErrExists. A leftover of a failed try is
// removed so the call goes on (done false).
func (s *Store) existingVolume(id string, spec VolumeSpec) (Volume, bool, error) {
	s.mu.Lock()
	r := s.volumes[id]
	s.mu.Unlock()
	if r == nil {
		return Volume{}, false, nil
	}
	if r.State != stateReady {
		return Volume{}, false, s.abandonVolume(id)
	}
	if !sameVolume(r, spec) {
		return Volume{}, true, errorf(ErrExists, "volume %q exists with another size, source or parameters", spec.Name)
	}
	return r.public(), true, nil
}

func sameVolume(r *volumeRecord, spec VolumeSpec) bool {
	if spec.Capacity != 0 && spec.Capacity != r.Capacity {
		return false
	}
	if !maps.Equal(r.Params, spec.Params) && !(len(r.Params) == 0 && len(spec.Params) == 0) {
		return false
	}
	switch {
	case spec.Source != nil:
		return r.Source != nil && *r.Source == *spec.Source
	case spec.Image != nil:
		return r.Source != nil && *r.Source == Source{Kind: SourceImage, ID: spec.Image.SHA256}
	}
	return r.Source == nil
}

// abandonVolume removes a volume record that never became ready; its
// files go with the collection.
func (s *Store) abandonVolume(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.dropVolume(id); err != nil {
		return err
	}
	return s.collect()
}

// makeTop creates r's top: an empty overlay over r's chain.
func (s *Store) makeTop(r *volumeRecord) error {
	if err := s.createLayer(r.Top, r.Chain, r.Capacity); err != nil {
		return fmt.Errorf("creating the top of volume %s: %w", r.ID, err)
	}
	step("top created")
	return durable.SyncDir(s.lay.dir(layersDir))
}

// createLayer makes layer id, empty, of size bytes, over chain c.
func (s *Store) createLayer(id string, c Chain, size int64) error {
	opts := qcow2.CreateOptions{Size: size}
	if n := c.depth(); n > 0 {
		opts.BackingFile = s.nameOf(c, n-1)
		opts.BackingFormat = "qcow2"
		opts.Backing = s.policy(c)
	}
	return qcow2.Create(s.lay.layerPath(id), opts)
}

// DeleteVolume removes volume id. Its layer files go once nothing reads
// them: its snapshots, and volumes restored from them, keep theirs.
func (s *Store) DeleteVolume(id string) error {
	if err := s.checkID(id, volumeKind); err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil // never made here: nothing to delete
		}
		return err
	}
	unlock, err := s.locks.tryLock(id)
	if err != nil {
		return err
	}
	defer unlock()
	if err := s.settlePending(id); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.volumes[id]; !ok {
		return nil
	}
	if s.held[id] != nil {
		return errorf(ErrInUse, "volume %s is attached", id)
	}
	if err := s.dropVolume(id); err != nil {
		return err
	}
	return s.collect()
}

// GetVolume returns volume id.
func (s *Store) GetVolume(id string) (Volume, error) {
	if err := s.checkID(id, volumeKind); err != nil {
		return Volume{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.volumes[id]
	if !ok || r.State != stateReady {
		return Volume{}, errorf(ErrNotFound, "volume %s", id)
	}
	return s.publicVolume(r), nil
}

// ListVolumes returns the ready volumes, sorted by ID.
func (s *Store) ListVolumes() []Volume {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Volume
	for _, r := range s.sortedVolumes() {
		out = append(out, s.publicVolume(r))
	}
	return out
}
