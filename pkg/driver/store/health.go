package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// Condition is a volume's health: Abnormal with a Reason and a message
// that says why.
type Condition struct {
	Abnormal bool
	Reason   string // one of the Reason constants when Abnormal
	Message  string
}

// Why a volume is not well.
const (
	ReasonMissingLayer = "MissingLayer" // a file of its chain is gone
	ReasonCorrupt      = "Corrupt"      // its top carries the corrupt bit
	ReasonOpenFailed   = "OpenFailed"   // its top does not open
	ReasonFailed       = "Failed"       // an operation failed on the image's account
	ReasonCheckFailed  = "CheckFailed"  // a check found corruption in a layer
)

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
			return Condition{Abnormal: true, Reason: ReasonMissingLayer, Message: fmt.Sprintf("layer file %s is missing", filepath.Base(f))}, nil
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
			return Condition{Abnormal: true, Reason: ReasonOpenFailed, Message: fmt.Sprintf("the top does not open: %v", err)}, nil
		}
		corrupt = img.Info().Corrupt
		img.Close()
	}
	switch {
	case corrupt:
		return Condition{Abnormal: true, Reason: ReasonCorrupt, Message: "the image is marked corrupt: run `csi-qcow2 img check -r all` on it"}, nil
	case fault.Abnormal:
		return fault, nil
	}
	return Condition{Message: "ok"}, nil
}

// CheckVolume checks every file of volume id's chain like `qemu-img
// check` and remembers a finding for its health (CheckFailed) until the
// volume opens again. Leaks are not findings. The top of a served volume
// is left out: it changes under the check, and the engine that writes it
// sets the corrupt bit itself should it find its metadata wrong.
func (s *Store) CheckVolume(ctx context.Context, id string) (Condition, error) {
	if err := s.checkID(id, volumeKind); err != nil {
		return Condition{}, err
	}
	s.mu.Lock()
	v, held := s.volumes[id], s.held[id] != nil
	s.mu.Unlock()
	if v == nil || v.State != stateReady {
		return Condition{}, errorf(ErrNotFound, "volume %s", id)
	}
	files := s.files(v.Chain)
	if !held {
		files = append(files, s.lay.layerPath(v.Top))
	}
	for _, f := range files {
		res, err := qcow2.CheckContext(ctx, f, qcow2.CheckOptions{ForceShare: true})
		if ctx.Err() != nil {
			return Condition{}, ctx.Err()
		}
		var why string
		switch {
		case errors.Is(err, fs.ErrNotExist):
			continue // Health says MissingLayer
		case err != nil:
			why = fmt.Sprintf("layer %s does not check: %v", filepath.Base(f), err)
		case res.Corruptions > 0 || res.CheckErrors > 0:
			why = fmt.Sprintf("a check of layer %s found %d corruptions and %d check errors", filepath.Base(f), res.Corruptions, res.CheckErrors)
		default:
			continue
		}
		c := Condition{Abnormal: true, Reason: ReasonCheckFailed, Message: why}
		s.mu.Lock()
		s.faults[id] = c
		s.mu.Unlock()
		return c, nil
	}
	return Condition{Message: "ok"}, nil
}
