package store

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// load reads every record into memory. A record whose name is not the
// ID it holds, or that does not decode, stops Open: guessing could lose
// a layer someone still reads.
func (s *Store) load() error {
	if err := loadDir(s.lay.dir(volumesDir), func(id, path string) error {
		var r volumeRecord
		if err := readRecord(path, &r); err != nil {
			return err
		}
		if r.ID != id {
			return fmt.Errorf("record %s holds volume %q", path, r.ID)
		}
		s.volumes[id] = &r
		return nil
	}); err != nil {
		return err
	}
	return loadDir(s.lay.dir(snapshotsDir), func(id, path string) error {
		var r snapshotRecord
		if err := readRecord(path, &r); err != nil {
			return err
		}
		if r.ID != id {
			return fmt.Errorf("record %s holds snapshot %q", path, r.ID)
		}
		s.snapshots[id] = &r
		return nil
	})
}

// loadDir calls fn for each <id>.json in dir and removes the temporaries
// of record writes a crash interrupted.
func loadDir(dir string, fn func(id, path string) error) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		name, path := e.Name(), filepath.Join(dir, e.Name())
		switch {
		case strings.HasPrefix(name, ".") && strings.Contains(name, ".tmp-"):
			if err := os.Remove(path); err != nil {
				return err
			}
		case strings.HasSuffix(name, ".json") && parseID(strings.TrimSuffix(name, ".json")).ok:
			if err := fn(strings.TrimSuffix(name, ".json"), path); err != nil {
				return err
			}
		}
	}
	return nil
}

// saveVolume writes r and makes it the record in memory; s.mu held. A
// record that was only in memory (being made) is written whole here.
func (s *Store) saveVolume(r *volumeRecord) error {
	if err := writeRecord(s.lay.volumeRecord(r.ID), r); err != nil {
		return err
	}
	s.volumes[r.ID] = r
	return nil
}

func (s *Store) saveSnapshot(r *snapshotRecord) error {
	if err := writeRecord(s.lay.snapshotRecord(r.ID), r); err != nil {
		return err
	}
	s.snapshots[r.ID] = r
	return nil
}

// dropVolume removes r's record; s.mu held. The files go with the next
// collection.
func (s *Store) dropVolume(id string) error {
	if err := removeDurable(s.lay.volumeRecord(id)); err != nil {
		return err
	}
	delete(s.volumes, id)
	delete(s.faults, id)
	return nil
}

func (s *Store) dropSnapshot(id string) error {
	if err := removeDurable(s.lay.snapshotRecord(id)); err != nil {
		return err
	}
	delete(s.snapshots, id)
	return nil
}

// update applies fn to a copy of volume id's record and saves it, so
// that a failed write leaves the record in memory as it is on disk.
func (s *Store) updateVolume(id string, fn func(r *volumeRecord)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.volumes[id]
	if !ok {
		return errorf(ErrNotFound, "volume %s", id)
	}
	r := *cur
	r.Chain = cur.Chain.clone()
	if cur.Pending != nil {
		p := *cur.Pending
		r.Pending = &p
	}
	fn(&r)
	return s.saveVolume(&r)
}

func (s *Store) updateSnapshot(id string, fn func(r *snapshotRecord)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.snapshots[id]
	if !ok {
		return errorf(ErrNotFound, "snapshot %s", id)
	}
	r := *cur
	r.Chain = cur.Chain.clone()
	fn(&r)
	return s.saveSnapshot(&r)
}
