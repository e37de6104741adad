package store

import (
	"context"
	"fmt"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// Source kinds.
const (
	SourceImage    = "image"
	SourceSnapshot = "snapshot"
	SourceVolume   = "volume"
)

// sourceChain resolves what a new volume stands on: the chain its top
// will name, the source's size, and, for a restore from an internal
// snapshot, that snapshot (its data is copied into the top). The caller
// holds the source's lock.
func (s *Store) sourceChain(ctx context.Context, spec VolumeSpec) (Chain, int64, *snapshotRecord, error) {
	switch {
	case spec.Image != nil && spec.Source != nil:
		return Chain{}, 0, nil, errorf(ErrInvalid, "a volume has one source: an image or a snapshot or a volume")
	case spec.Image != nil:
		size, err := s.importImage(ctx, *spec.Image)
		return Chain{Image: spec.Image.SHA256}, size, nil, err
	case spec.Source == nil:
		return Chain{}, 0, nil, nil
	case spec.Source.Kind == SourceSnapshot:
		sn, err := s.readySnapshot(spec.Source.ID)
		if err != nil {
			return Chain{}, 0, nil, err
		}
		if sn.Type == TypeInternal {
			c := sn.Chain.clone()
			c.Layers = c.Layers[:len(c.Layers)-1]
			return c, sn.Size, sn, nil
		}
		return sn.Chain.clone(), sn.Size, nil, nil
	case spec.Source.Kind == SourceVolume:
		if err := s.checkID(spec.Source.ID, volumeKind); err != nil {
			return Chain{}, 0, nil, err
		}
		chain, err := s.freezeTop(spec.Source.ID)
		if err != nil {
			return Chain{}, 0, nil, err
		}
		s.mu.Lock()
		size := s.volumes[spec.Source.ID].Capacity
		s.mu.Unlock()
		return chain, size, nil, nil
	}
	return Chain{}, 0, nil, errorf(ErrInvalid, "unknown source kind %q", spec.Source.Kind)
}

// importImage makes sure the golden image is in the store and returns
// its virtual size. The image is opened as it will be read: standalone
// (no backing file, no external data file) and within the engine's
// bounds.
func (s *Store) importImage(ctx context.Context, ref ImageRef) (int64, error) {
	if !shaPattern.MatchString(ref.SHA256) {
		return 0, errorf(ErrInvalid, "image checksum %q is not 64 lowercase hex digits", ref.SHA256)
	}
	if s.cfg.ImportImage == nil {
		return 0, errorf(ErrInvalid, "this driver imports no images")
	}
	if err := s.cfg.ImportImage(ctx, ref.URL, ref.SHA256); err != nil {
		return 0, err
	}
	img, err := qcow2.Open(s.lay.imagePath(ref.SHA256), qcow2.Options{ReadOnly: true, Backing: qcow2.BackingPolicy{Standalone: true}})
	if err != nil {
		return 0, fmt.Errorf("golden image %s: %w", ref.SHA256, err)
	}
	defer img.Close()
	return img.Size(), nil
}
