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

// sourceSize checks a new volume's source and returns its size (0 for an
// empty volume), changing nothing but the image cache: a golden image is
// imported here. The caller holds the source's lock.
func (s *Store) sourceSize(ctx context.Context, spec VolumeSpec) (int64, error) {
	switch {
	case spec.Image != nil && spec.Source != nil:
		return 0, errorf(ErrInvalid, "a volume has one source: an image or a snapshot or a volume")
	case spec.Image != nil:
		return s.importImage(ctx, *spec.Image)
	case spec.Source == nil:
		return 0, nil
	case spec.Source.Kind == SourceSnapshot:
		sn, err := s.readySnapshot(spec.Source.ID)
		if err != nil {
			return 0, err
		}
		return sn.Size, nil
	case spec.Source.Kind == SourceVolume:
		if err := s.checkID(spec.Source.ID, volumeKind); err != nil {
			return 0, err
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		v := s.volumes[spec.Source.ID]
		if v == nil || v.State != stateReady {
			return 0, errorf(ErrNotFound, "volume %s", spec.Source.ID)
		}
		return v.Capacity, nil
	}
	return 0, errorf(ErrInvalid, "unknown source kind %q", spec.Source.Kind)
}

// sourceChain resolves the chain a new volume's top will name, once
// sourceSize has accepted the source. A clone freezes its source here;
// the first restore from an internal snapshot makes the snapshot's layer
// (materialize). The caller holds the source's lock.
func (s *Store) sourceChain(ctx context.Context, spec VolumeSpec) (Chain, error) {
	switch {
	case spec.Image != nil:
		return Chain{Image: spec.Image.SHA256}, nil
	case spec.Source == nil:
		return Chain{}, nil
	case spec.Source.Kind == SourceSnapshot:
		sn, err := s.readySnapshot(spec.Source.ID)
		if err != nil {
			return Chain{}, err
		}
		if sn.Type == TypeInternal {
			return s.materialize(ctx, sn)
		}
		return sn.Chain.clone(), nil
	}
	return s.freezeTop(spec.Source.ID)
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
	s.mu.Lock()
	size, ok := s.imageSize[ref.SHA256]
	s.mu.Unlock()
	if ok {
		return size, nil // images never change
	}
	img, err := qcow2.Open(s.lay.imagePath(ref.SHA256), qcow2.Options{ReadOnly: true, Backing: qcow2.BackingPolicy{Standalone: true}})
	if err != nil {
		return 0, fmt.Errorf("golden image %s: %w", ref.SHA256, err)
	}
	defer img.Close()
	s.mu.Lock()
	s.imageSize[ref.SHA256] = img.Size()
	s.mu.Unlock()
	return img.Size(), nil
}
