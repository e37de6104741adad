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
// stands on. The first restore makes a frozen layer for it, recorded in
// the snapshot's record, and later restores are overlays on that layer,
// O(1) like every other restore. The layer is the cheaper of two, so the
// first restore costs at most the data the snapshot holds in its file:
//
//   - a diff: the file holding the snapshot is frozen (live, as for a
//     clone, when it is still the volume's top), and the layer over it
//     holds the snapshot's content where the file changed after the
//     snapshot was taken. A restore of a fresh snapshot copies nothing.
//   - a copy: the layer over the chain below the file holds what the
//     snapshot holds in the file (its data and zero clusters).
//
// A reflink of the whole file would cost nothing on XFS or btrfs but
// fail on ext4, and would carry the file's other snapshots and the
// volume's later writes along; both layers here work everywhere. The
// caller holds sn's lock and its volume's.
func (s *Store) materialize(ctx context.Context, sn *snapshotRecord) (Chain, error) {
	if sn.Layer != "" {
		return sn.restoreBase(), nil
	}
	held, changed, err := s.internalRanges(sn)
	if err != nil {
		return Chain{}, err
	}
	if bytesIn(changed) <= bytesIn(held) {
		frozen, err := s.freezeInternal(ctx, sn)
		if err == nil {
			// Writes before the freeze changed the file further.
			if _, changed, err = s.internalRanges(frozen); err != nil {
				return Chain{}, err
			}
			return s.makeRestoreLayer(ctx, frozen, true, changed)
		}
		// A top that takes no writes (marked corrupt, say: the very
		// volume one restores a snapshot of) cannot be frozen; the copy
		// only reads it.
		s.logf("restoring internal snapshot %s: its file could not be frozen (%v); copying what the snapshot holds instead", sn.ID, err)
		// A freeze that got as far as moving the file renamed it in the
		// record; what the snapshot holds in it is the same.
		if sn, err = s.readySnapshot(sn.ID); err != nil {
			return Chain{}, err
		}
	}
	return s.makeRestoreLayer(ctx, sn, false, held)
}

// restoreBase is the chain restores from internal snapshot sn stand on
// once its layer is made.
func (sn *snapshotRecord) restoreBase() Chain {
	c := sn.Chain.clone()
	if !sn.LayerAbove {
		c.Layers = c.Layers[:len(c.Layers)-1]
	}
	c.Layers = append(c.Layers, sn.Layer)
	return c
}

// internalRanges returns, clipped to sn's size, the ranges internal
// snapshot sn holds in its file and the ranges where the file's active
// layer may read otherwise than the snapshot.
func (s *Store) internalRanges(sn *snapshotRecord) (held, changed []qcow2.Range, err error) {
	err = s.readInternal(sn, func(img *qcow2.Image) error {
		if held, err = img.AllocatedRanges(sn.Internal); err != nil {
			return err
		}
		changed, err = img.ChangedRanges(sn.Internal, "")
		return err
	})
	return clipRanges(held, sn.Size), clipRanges(changed, sn.Size), err
}

// freezeInternal makes the file holding internal snapshot sn a frozen
// layer if it is still its volume's top, and returns sn's record then
// (the freeze moves the snapshot to the new layer's ID). A frozen file
// never changes what its active layer reads again.
func (s *Store) freezeInternal(ctx context.Context, sn *snapshotRecord) (*snapshotRecord, error) {
	s.mu.Lock()
	v := s.volumes[sn.Volume]
	s.mu.Unlock()
	if v == nil || v.Top != sn.Chain.Layers[len(sn.Chain.Layers)-1] {
		return sn, nil
	}
	if _, err := s.freezeTop(v.ID); err != nil {
		return nil, err
	}
	// The new top holds no internal snapshot: a merge the freeze had to
	// skip can run now (capDepth).
	s.capDepth(ctx, v.ID)
	return s.readySnapshot(sn.ID)
}

// makeRestoreLayer makes sn's restore layer, over sn's whole chain
// (above) or over the chain below its file, holding the snapshot's
// content in ranges, and records it in sn's record.
func (s *Store) makeRestoreLayer(ctx context.Context, sn *snapshotRecord, above bool, ranges []qcow2.Range) (Chain, error) {
	id := newLayerID()
	s.mu.Lock()
	s.making[id] = true
	s.mu.Unlock()
	base := sn.Chain.clone()
	if !above {
		base.Layers = base.Layers[:len(base.Layers)-1]
	}
	err := s.copyInternal(ctx, sn, id, base, ranges)
	if err == nil {
		err = s.updateSnapshot(sn.ID, func(r *snapshotRecord) { r.Layer, r.LayerAbove = id, above })
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
	base.Layers = append(base.Layers, id)
	return base, nil
}

// copyInternal makes layer id over chain base and fills ranges with
// what internal snapshot sn reads there, durably.
func (s *Store) copyInternal(ctx context.Context, sn *snapshotRecord, id string, base Chain, ranges []qcow2.Range) error {
	if err := s.createLayer(id, base, sn.Size); err != nil {
		return err
	}
	step("layer created")
	// With the journal, a write into the new layer waits for no
	// fdatasync before its mapping; the Flush below makes it all durable.
	dst, err := qcow2.Open(s.lay.layerPath(id), qcow2.Options{Backing: s.policy(base), Journal: true})
	if err != nil {
		return err
	}
	if len(ranges) > 0 {
		err = s.readInternal(sn, func(img *qcow2.Image) error {
			view, err := img.OpenSnapshot(sn.Internal)
			if err != nil {
				return err
			}
			return copyRanges(ctx, view, dst, ranges)
		})
	}
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

// clipRanges cuts sorted ranges at size.
func clipRanges(rs []qcow2.Range, size int64) []qcow2.Range {
	var out []qcow2.Range
	for _, r := range rs {
		if r.Start >= size {
			break
		}
		r.Length = min(r.Length, size-r.Start)
		out = append(out, r)
	}
	return out
}

func bytesIn(rs []qcow2.Range) int64 {
	var n int64
	for _, r := range rs {
		n += r.Length
	}
	return n
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
