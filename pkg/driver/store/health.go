package store

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// Condition is a volume's health: Abnormal with a message that says why
// (a corrupt bit, a failed check or open, a missing layer file).
type Condition struct {
	Abnormal bool
	Message  string
}

// Health looks at volume id: every file of its chain is there, its top
// is not marked corrupt, and nothing the store did with it failed on the
// image's account.
func (s *Store) Health(id string) (Condition, error) {
	if err := s.checkID(id, volumeKind); err != nil {
		return Condition{}, err
	}
	s.mu.Lock()
	v := s.volumes[id]
	fault := s.faults[id]
	h := s.held[id]
	s.mu.Unlock()
	if v == nil || v.State != stateReady {
		return Condition{}, errorf(ErrNotFound, "volume %s", id)
	}
	for _, f := range append(s.files(v.Chain), s.lay.layerPath(v.Top)) {
		if _, err := os.Stat(f); errors.Is(err, fs.ErrNotExist) {
			return Condition{Abnormal: true, Message: fmt.Sprintf("layer file %s is missing", f)}, nil
		}
	}
	var corrupt bool
	if h != nil {
		corrupt = h.live.Info().Corrupt
	} else {
		img, err := qcow2.Open(s.lay.layerPath(v.Top), qcow2.Options{ReadOnly: true, NoBacking: true, ForceShare: true})
		if errors.Is(err, qcow2.ErrJournalPending) {
			return Condition{Message: "ok (a write journal is replayed at the next open)"}, nil
		}
		if err != nil {
			return Condition{Abnormal: true, Message: fmt.Sprintf("the top does not open: %v", err)}, nil
		}
		corrupt = img.Info().Corrupt
		img.Close()
	}
	switch {
	case corrupt:
		return Condition{Abnormal: true, Message: "the image is marked corrupt: run `csi-qcow2 img check -r all` on it"}, nil
	case fault != "":
		return Condition{Abnormal: true, Message: fault}, nil
	}
	return Condition{Message: "ok"}, nil
}
