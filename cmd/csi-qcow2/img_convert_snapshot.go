package main

import (
	"strings"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// snapshotRef names an internal snapshot as -l or -s give it: by id and/or
// name (snapshot.id=X,snapshot.name=Y), or by one string matched against
// ids first, then names (ID_OR_NAME).
type snapshotRef struct {
	id, name, idOrName string
}

func (r snapshotRef) isSet() bool { return r.id != "" || r.name != "" || r.idOrName != "" }

// parseSnapshotParam parses -l's SNAPSHOT_PARAM.
func parseSnapshotParam(s string) (snapshotRef, error) {
	if !strings.HasPrefix(s, "snapshot.") {
		return snapshotRef{idOrName: s}, nil
	}
	var r snapshotRef
	for _, kv := range splitOptList(s) {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "snapshot.id":
			r.id = v
		case "snapshot.name":
			r.name = v
		default:
			return r, failf("Invalid parameter '%s'", k)
		}
	}
	if !r.isSet() {
		return r, failf("Failed in parsing snapshot param '%s'", s)
	}
	return r, nil
}

// resolve returns the id of the snapshot r names in img.
func (r snapshotRef) resolve(img *qcow2.Image) (string, error) {
	list, err := img.Snapshots()
	if err != nil {
		return "", err
	}
	if r.idOrName != "" {
		for _, match := range []func(qcow2.SnapshotInfo) bool{
			func(s qcow2.SnapshotInfo) bool { return s.ID == r.idOrName },
			func(s qcow2.SnapshotInfo) bool { return s.Name == r.idOrName },
		} {
			for _, s := range list {
				if match(s) {
					return s.ID, nil
				}
			}
		}
	}
	for _, s := range list {
		if r.idOrName == "" && (r.id == "" || s.ID == r.id) && (r.name == "" || s.Name == r.name) {
			return s.ID, nil
		}
	}
	return "", failf("Failed to load snapshot: Can't find snapshot")
}

// snapshotSource reads an internal snapshot: what it defines comes from
// the view; the rest from the image's backing file (or zeros).
type snapshotSource struct {
	*qcow2.SnapshotView
	alloc []qcow2.Range // the ranges the snapshot itself defines
	below qcow2.Disk    // the image's backing file, or nil
}

func openSnapshotSource(d qcow2.Disk, ref snapshotRef) (*snapshotSource, error) {
	img, ok := d.(*qcow2.Image)
	if !ok {
		return nil, failf("Failed to load snapshot: snapshots are not supported by format 'raw'")
	}
	id, err := ref.resolve(img)
	if err != nil {
		return nil, err
	}
	v, err := img.OpenSnapshot(id)
	if err != nil {
		return nil, failf("Failed to load snapshot: %v", err)
	}
	alloc, err := img.AllocatedRanges(id)
	if err != nil {
		return nil, failf("Failed to load snapshot: %v", err)
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
