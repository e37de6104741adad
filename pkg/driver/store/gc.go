package store

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/csi-qcow2/csi-qcow2/internal/durable"
)

// referenced is every layer some record names: tops, chains, and the
// layer of a freeze in progress. Records are written before the files
// they name, so a file being made is always referenced.
func (s *Store) referenced() map[string]bool {
	ref := map[string]bool{}
	for _, v := range s.volumes {
		ref[v.Top] = true
		for _, l := range v.Chain.Layers {
			ref[l] = true
		}
		if v.Pending != nil && v.Pending.Layer != "" {
			ref[v.Pending.Layer] = true
		}
	}
	for _, sn := range s.snapshots {
		for _, l := range sn.Chain.Layers {
			ref[l] = true
		}
		if sn.Layer != "" {
			ref[sn.Layer] = true
		}
	}
	for l := range s.making {
		ref[l] = true
	}
	return ref
}

// collect removes the layer files no record names, with their journals
// and freeze leftovers; s.mu held. Files the store did not name are left
// alone.
func (s *Store) collect() error {
	ref := s.referenced()
	dir := s.lay.dir(layersDir)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	removed := 0
	for _, e := range ents {
		id := layerOfFile(e.Name())
		if id == "" || ref[id] {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		removed++
		step("layer file collected")
	}
	if removed == 0 {
		return nil
	}
	s.logf("collected %d unreferenced layer files", removed)
	return durable.SyncDir(dir)
}

// layerOfFile names the layer a file in layers/ belongs to: the layer
// itself (<id>.qcow2), its write journal (<id>.qcow2.journal) or a
// freeze's temporary (.<id>.qcow2.freeze); "" for anything else.
func layerOfFile(name string) string {
	name = strings.TrimPrefix(name, ".")
	id, _, _ := strings.Cut(name, ".")
	if !layerPattern.MatchString(id) || !strings.HasPrefix(name[len(id):], ".qcow2") {
		return ""
	}
	return id
}

// layerBytes is what the files of layer id occupy on disk.
func (s *Store) layerBytes(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return allocatedBytes(st)
}
