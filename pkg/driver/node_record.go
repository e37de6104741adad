package driver

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/csi-qcow2/csi-qcow2/internal/durable"
)

// nodeDir holds a record per staged volume, <state-dir>/node/<id>.json,
// so that a restarted driver knows what it had staged and where: on
// kernel NBD it re-adopts the devices (readopt.go). The store neither
// reads nor collects it.
const nodeDir = "node"

// nodeRecord is what the node service must know of a staged volume to
// serve it again after a restart.
type nodeRecord struct {
	Volume   string          `json:"volume"`
	Path     string          `json:"path"`      // staging_target_path
	Attach   string          `json:"attach"`    // the attach path that staged it (nbd, fuse)
	Device   string          `json:"device"`    // /dev/nbdN or /dev/loopN
	Block    bool            `json:"block"`     // block access
	FsType   string          `json:"fs_type"`   // mount access
	Flags    []string        `json:"flags"`     // mount access
	ReadOnly bool            `json:"read_only"` // staged read-only
	Targets  map[string]bool `json:"targets"`   // published at, read-only or not
	// Dead are the targets that hold an earlier run's dead filesystem.
	Dead map[string]bool `json:"dead_targets,omitempty"`
}

func (d *Driver) nodeRecordPath(id string) string {
	return filepath.Join(d.cfg.StateDir, nodeDir, id+".json")
}

// saveStaged records staged volume id as it is now, durably.
func (d *Driver) saveStaged(id string, s *staged) error {
	return d.saveRecord(nodeRecord{Volume: id, Path: s.path, Attach: d.path.name(), Device: s.device(), Block: s.block,
		FsType: s.fsType, Flags: s.flags, ReadOnly: s.readOnly, Targets: s.targets, Dead: s.dead})
}

// saveRecord writes r, durably.
func (d *Driver) saveRecord(r nodeRecord) error {
	id := r.Volume
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(d.cfg.StateDir, nodeDir), 0o700); err != nil {
		return err
	}
	if err := durable.WriteFile(d.nodeRecordPath(id), append(b, '\n'), nil); err != nil {
		return fmt.Errorf("recording staged volume %s: %w", id, err)
	}
	return nil
}

// dropStaged removes staged volume id's record.
func (d *Driver) dropStaged(id string) error {
	if err := durable.Remove(d.nodeRecordPath(id), nil); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing the record of staged volume %s: %w", id, err)
	}
	return nil
}

// stagedRecords reads the records an earlier run left, skipping (and
// removing) leftover temporaries.
func (d *Driver) stagedRecords() ([]nodeRecord, error) {
	dir := filepath.Join(d.cfg.StateDir, nodeDir)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	var out []nodeRecord
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		if strings.HasPrefix(e.Name(), ".") {
			os.Remove(p) // a temporary a crash left
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		var r nodeRecord
		if err := json.Unmarshal(b, &r); err != nil || r.Volume+".json" != e.Name() {
			return nil, fmt.Errorf("node record %s is unreadable: %v", p, err)
		}
		out = append(out, r)
	}
	return out, nil
}
