package store

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"slices"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// recover brings the records to a state where every object exists whole
// or not at all: pending changes of tops are settled, volumes and
// snapshots still being made are removed (their files go with the
// collection that follows), and internal snapshots the CO never got are
// dropped only where a ready record could not name them. What cannot be
// settled for one volume (its top does not open, say) is left as it is,
// files included, and reported in its health: the node's other volumes
// are served.
func (s *Store) recover() error {
	for _, id := range slices.Sorted(maps.Keys(s.volumes)) {
		if err := s.settlePending(id); err != nil {
			s.logf("volume %s: %v", id, err)
			s.faults[id] = Condition{Abnormal: true, Reason: ReasonFailed, Message: "recovery after a crash: " + err.Error()}
		}
	}
	for _, id := range slices.Sorted(maps.Keys(s.volumes)) {
		if err := s.applyJournal(s.volumes[id]); err != nil {
			s.logf("volume %s: %v", id, err)
			s.faults[id] = Condition{Abnormal: true, Reason: ReasonFailed, Message: "recovery after a crash: " + err.Error()}
		}
	}
	for id, v := range s.volumes {
		if v.State == stateReady {
			continue
		}
		s.logf("volume %s (%q) was being made: removed", id, v.Name)
		if err := s.dropVolume(id); err != nil {
			return err
		}
	}
	for id, sn := range s.snapshots {
		if sn.State == stateReady {
			continue
		}
		ready, err := s.internalExists(sn)
		if err != nil {
			// Kept as it is (not listed); a retry of the call replaces it.
			s.logf("snapshot %s (%q): %v", id, sn.Name, err)
			s.faults[sn.Volume] = Condition{Abnormal: true, Reason: ReasonFailed, Message: "recovery after a crash: " + err.Error()}
			continue
		}
		if ready {
			s.logf("snapshot %s (%q) was taken before the crash: kept", id, sn.Name)
			sn.State = stateReady
			if err := s.saveSnapshot(sn); err != nil {
				return err
			}
			continue
		}
		s.logf("snapshot %s (%q) was being taken: removed", id, sn.Name)
		if err := s.dropSnapshot(id); err != nil {
			return err
		}
	}
	return nil
}

// applyJournal applies the write journal a killed process left in ready
// volume v's top. The engine reads such a top by its path (the journal's
// mappings overlaid), but QEMU refuses it (the journal's incompatible
// feature bit) and a check reports it until a writable open applies it:
// a volume nothing serves again would keep it.
func (s *Store) applyJournal(v *volumeRecord) error {
	if v.State != stateReady {
		return nil
	}
	top := s.lay.layerPath(v.Top)
	if _, err := os.Stat(qcow2.JournalPath(top)); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	img, err := qcow2.Open(top, s.topOptions(v))
	if err != nil {
		return fmt.Errorf("applying the write journal of its top: %w", err)
	}
	s.logf("volume %s: the write journal a killed process left is applied", v.ID)
	return img.Close()
}

// internalExists reports whether the internal snapshot a record in
// progress names is in its file; external snapshots in progress are
// never kept (their layer, if made, stays in the volume's chain).
func (s *Store) internalExists(sn *snapshotRecord) (bool, error) {
	if sn.Type != TypeInternal || len(sn.Chain.Layers) == 0 {
		return false, nil
	}
	// The file is the top of the volume (the snapshot's lock kept the
	// volume's top in place): opened as the volume is, so that a journal
	// the crash left is replayed first.
	v := s.volumes[sn.Volume]
	if v == nil {
		return false, nil
	}
	img, err := qcow2.Open(s.lay.layerPath(sn.Chain.Layers[len(sn.Chain.Layers)-1]), s.topOptions(v))
	if err != nil {
		return false, fmt.Errorf("snapshot %s: %w", sn.ID, err)
	}
	defer img.Close()
	list, err := img.Snapshots()
	if err != nil {
		return false, err
	}
	for _, in := range list {
		if in.Name == sn.Internal {
			return true, nil
		}
	}
	return false, nil
}
