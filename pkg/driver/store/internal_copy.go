package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/csi-qcow2/csi-qcow2/internal/durable"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// copyChunk is how much an internal restore reads and writes at a time.
const copyChunk = 1 << 20

// materialize returns the chain a restore from internal snapshot sn
// stands on: the snapshot's chain below its file, and a frozen layer
// that holds what the snapshot holds in that file (its data and zero
// clusters, read through the snapshot). The first restore makes the
// layer and records it in the snapshot's record; later restores are
// overlays on it, O(1) like every other restore. So the first costs the
// data the snapshot holds, once, not the volume's size. (A reflink of the
// whole file would cost nothing on XFS or btrfs but fail on ext4, and
// would carry the file's other snapshots and the volume's later writes
// along; a copy of what the snapshot holds is the same everywhere.) The
// caller holds sn's lock and its volume's.
func (s *Store) materialize(ctx context.Context, sn *snapshotRecord) (Chain, error) {
	below := sn.Chain.clone()
	below.Layers = below.Layers[:len(below.Layers)-1]
	if sn.Layer != "" {
		below.Layers = append(below.Layers, sn.Layer)
		return below, nil
	}
	id := newLayerID()
	s.mu.Lock()
	s.making[id] = true
	s.mu.Unlock()
	err := s.copyInternal(ctx, sn, id, below)
	if err == nil {
		err = s.updateSnapshot(sn.ID, func(r *snapshotRecord) { r.Layer = id })
	}
	s.mu.Lock()
	delete(s.making, id)
	if err != nil {
		err = errors.Join(fmt.Errorf("restoring internal snapshot %s: %w", sn.ID, err), s.collect())
	}
	s.mu.Unlock()
	if err != nil {
		return Chain{}, err
	}
	below.Layers = append(below.Layers, id)
	return below, nil
}

// copyInternal makes layer id over chain below and fills it with what
// internal snapshot sn holds in its own file, durably.
func (s *Store) copyInternal(ctx context.Context, sn *snapshotRecord, id string, below Chain) error {
	if err := s.createLayer(id, below, sn.Size); err != nil {
		return err
	}
	step("layer created")
	// With the journal, a write into the new layer waits for no
	// fdatasync before its mapping; the Flush below makes it all durable.
	dst, err := qcow2.Open(s.lay.layerPath(id), qcow2.Options{Backing: s.policy(below), Journal: true})
	if err != nil {
		return err
	}
	err = s.readInternal(sn, func(img *qcow2.Image) error {
		ranges, err := img.AllocatedRanges(sn.Internal)
		if err != nil {
			return err
		}
		view, err := img.OpenSnapshot(sn.Internal)
		if err != nil {
			return err
		}
		return copyRanges(ctx, view, dst, ranges)
	})
	if err == nil {
		err = dst.Flush()
	}
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return durable.SyncDir(s.lay.dir(layersDir))
}

// readInternal runs fn on the image holding sn's internal snapshot: the
// served volume's top through its live handle, or the file opened
// read-only with exactly its chain below it.
func (s *Store) readInternal(sn *snapshotRecord, fn func(img *qcow2.Image) error) error {
	file := sn.Chain.Layers[len(sn.Chain.Layers)-1]
	s.mu.Lock()
	h := s.held[sn.Volume]
	v := s.volumes[sn.Volume]
	s.mu.Unlock()
	if h != nil && v != nil && v.Top == file {
		return h.live.WithImage(fn)
	}
	below := sn.Chain.clone()
	below.Layers = below.Layers[:len(below.Layers)-1]
	img, err := qcow2.Open(s.lay.layerPath(file), qcow2.Options{ReadOnly: true, Backing: s.policy(below)})
	if err != nil {
		return err
	}
	return errors.Join(fn(img), img.Close())
}

func copyRanges(ctx context.Context, src *qcow2.SnapshotView, dst *qcow2.Image, ranges []qcow2.Range) error {
	buf := make([]byte, copyChunk)
	for _, rg := range ranges {
		for off := rg.Start; off < rg.End(); off += copyChunk {
			if err := ctx.Err(); err != nil {
				return err
			}
			step("restore copying")
			p := buf[:min(copyChunk, rg.End()-off)]
			if _, err := src.ReadAt(p, off); err != nil {
				return err
			}
			if allZero(p) {
				// Zero here must still hide what the chain below holds.
				if err := dst.WriteZeroes(off, int64(len(p)), false); err != nil {
					return err
				}
				continue
			}
			if _, err := dst.WriteAt(p, off); err != nil {
				return err
			}
		}
	}
	return nil
}

func allZero(p []byte) bool {
	for _, b := range p {
		if b != 0 {
			return false
		}
	}
	return true
}
