package store

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// settlePending finishes or undoes a change of volume id's top that did
// not complete: a freeze that made its layer joins the chain (and the
// internal snapshots that were in the old top follow it into the layer);
// a collapse that switched the top's backing file drops the merged layers
// from the chain. The caller holds id's lock, or is Open.
func (s *Store) settlePending(id string) error {
	s.mu.Lock()
	v := s.volumes[id]
	s.mu.Unlock()
	if v == nil || v.Pending == nil {
		return nil
	}
	switch v.Pending.Op {
	case opFreeze:
		return s.settleFreeze(v)
	case opCollapse:
		return s.settleCollapse(v)
	case opExpand:
		return s.settleExpand(v)
	}
	return fmt.Errorf("volume %s: unknown pending operation %q", id, v.Pending.Op)
}

func (s *Store) settleFreeze(v *volumeRecord) error {
	layer := v.Pending.Layer
	frozen, err := qcow2.RecoverFreeze(s.lay.layerPath(v.Top), s.lay.layerPath(layer))
	if err != nil {
		return fmt.Errorf("volume %s: settling a freeze: %w", v.ID, err)
	}
	if frozen {
		// Internal snapshots taken in the old top now live in the layer.
		if err := s.moveInternalSnapshots(v.Top, layer); err != nil {
			return err
		}
	}
	return s.updateVolume(v.ID, func(r *volumeRecord) {
		if frozen && !slices.Contains(r.Chain.Layers, layer) {
			r.Chain.Layers = append(r.Chain.Layers, layer)
		}
		r.Pending = nil
	})
}

// moveInternalSnapshots points the internal snapshots held in layer from
// at layer to.
func (s *Store) moveInternalSnapshots(from, to string) error {
	s.mu.Lock()
	var ids []string
	for _, sn := range s.snapshots {
		if n := len(sn.Chain.Layers); n > 0 && sn.Chain.Layers[n-1] == from {
			ids = append(ids, sn.ID)
		}
	}
	s.mu.Unlock()
	for _, id := range ids {
		err := s.updateSnapshot(id, func(r *snapshotRecord) {
			r.Chain.Layers[len(r.Chain.Layers)-1] = to
		})
		if err != nil && !errors.Is(err, ErrNotFound) { // deleted meanwhile
			return err
		}
	}
	return nil
}

func (s *Store) settleCollapse(v *volumeRecord) error {
	keep := v.Pending.Keep
	files := s.files(v.Chain)
	hdr, err := s.topHeader(v)
	backing := hdr.BackingFile
	if err != nil {
		return fmt.Errorf("volume %s: settling a collapse: %w", v.ID, err)
	}
	// The engine stores the name relative to the top's directory.
	if backing != "" && !filepath.IsAbs(backing) {
		backing = filepath.Join(s.lay.dir(layersDir), backing)
	}
	switched := keep >= 1 && keep <= len(files) && backing == files[keep-1]
	return s.updateVolume(v.ID, func(r *volumeRecord) {
		if switched {
			r.Chain = truncateChain(r.Chain, keep)
		}
		r.Pending = nil
	})
}

// nameOf is the backing file name a top in layers/ stores for file i of
// chain c (images first).
func (s *Store) nameOf(c Chain, i int) string {
	if c.Image != "" {
		if i == 0 {
			return backingName(imagesDir, c.Image)
		}
		i--
	}
	return backingName(layersDir, c.Layers[i])
}

// truncateChain keeps the bottom keep files of c.
func truncateChain(c Chain, keep int) Chain {
	out := c.clone()
	if out.Image != "" {
		keep--
	}
	out.Layers = out.Layers[:keep]
	return out
}

// topHeader reads the header of v's top: through the served handle, or
// the file alone (no backing chain, no lock in anyone's way).
func (s *Store) topHeader(v *volumeRecord) (qcow2.Header, error) {
	s.mu.Lock()
	h := s.held[v.ID]
	s.mu.Unlock()
	if h != nil {
		return h.live.Header(), nil
	}
	img, err := qcow2.Open(s.lay.layerPath(v.Top), qcow2.Options{ReadOnly: true, NoBacking: true, ForceShare: true})
	if err != nil {
		return qcow2.Header{}, err
	}
	defer img.Close()
	return img.Header(), nil
}
