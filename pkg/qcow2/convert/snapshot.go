package convert

import (
	"errors"
	"fmt"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// ErrNoSnapshot is Snapshot's error when the image has no snapshot the
// reference names.
var ErrNoSnapshot = errors.New("no such snapshot")

// SnapshotRef names an internal snapshot as qemu-img convert -l or -s do:
// by ID and/or Name (both set: the snapshot must match both), or by one
// string matched against IDs first, then names (IDOrName).
type SnapshotRef struct {
	ID, Name, IDOrName string
}

// IsSet reports whether r names a snapshot at all.
func (r SnapshotRef) IsSet() bool { return r.ID != "" || r.Name != "" || r.IDOrName != "" }

// resolve returns the id of the snapshot r names in img.
func (r SnapshotRef) resolve(img *qcow2.Image) (string, error) {
	list, err := img.Snapshots()
	if err != nil {
		return "", err
	}
	if r.IDOrName != "" {
		for _, match := range []func(qcow2.SnapshotInfo) bool{
			func(s qcow2.SnapshotInfo) bool { return s.ID == r.IDOrName },
			func(s qcow2.SnapshotInfo) bool { return s.Name == r.IDOrName },
		} {
			for _, s := range list {
				if match(s) {
					return s.ID, nil
				}
			}
		}
	}
	for _, s := range list {
		if r.IDOrName == "" && (r.ID == "" || s.ID == r.ID) && (r.Name == "" || s.Name == r.Name) {
			return s.ID, nil
		}
	}
	return "", ErrNoSnapshot
}

// snapshotSource reads an internal snapshot: what it defines comes from
// the view; the rest from the image's backing file (or zeros).
type snapshotSource struct {
	*qcow2.SnapshotView
	alloc []qcow2.Range // the ranges the snapshot itself defines
	below qcow2.Disk    // the image's backing file, or nil
}

// Snapshot returns the content of the internal snapshot of d that ref
// names, as a Source (the snapshot's clusters over d's backing file).
// d must be a qcow2 image; it stays the caller's and must stay open while
// the Source is read.
func Snapshot(d qcow2.Disk, ref SnapshotRef) (Source, error) {
	img, ok := d.(*qcow2.Image)
	if !ok {
		return nil, fmt.Errorf("snapshots are not supported by format '%s'", d.Info().Format)
	}
	id, err := ref.resolve(img)
	if err != nil {
		return nil, err
	}
	v, err := img.OpenSnapshot(id)
	if err != nil {
		return nil, err
	}
	alloc, err := img.AllocatedRanges(id)
	if err != nil {
		return nil, err
	}
	return &snapshotSource{SnapshotView: v, alloc: alloc, below: img.Backing()}, nil
}

// Map reports the snapshot's ranges as data and maps the rest through the
// backing file; it is conservative (zero clusters count as data), which
// only costs a read of zeros.
func (s *snapshotSource) Map(off, n int64) ([]qcow2.Extent, error) {
	var out []qcow2.Extent
	end := off + n
	gap := func(a, b int64) error {
		if a >= b {
			return nil
		}
		if s.below != nil && a < s.below.Size() {
			l := min(b, s.below.Size()) - a
			ext, err := s.below.Map(a, l)
			if err != nil {
				return err
			}
			out = append(out, ext...)
			a += l
		}
		if a < b {
			out = append(out, qcow2.Extent{Start: a, Length: b - a, Zero: true, Offset: -1})
		}
		return nil
	}
	pos := off
	for _, r := range s.alloc {
		a, b := max(r.Start, off), min(r.End(), end)
		if a >= b {
			continue
		}
		if err := gap(pos, a); err != nil {
			return nil, err
		}
		out = append(out, qcow2.Extent{Start: a, Length: b - a, Data: true, Present: true, Offset: -1})
		pos = b
	}
	if err := gap(pos, end); err != nil {
		return nil, err
	}
	return out, nil
}
