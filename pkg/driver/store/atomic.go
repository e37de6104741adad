package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/csi-qcow2/csi-qcow2/internal/durable"
)

// writeRecord replaces the record at path with v, atomically and durably:
// a temporary file in the same directory is written and fsynced, renamed
// over path, and the directory is fsynced. A crash leaves either the old
// record or the new one, never a mix (a leftover temporary is collected
// by Open).
func writeRecord(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := durable.WriteFile(path, append(b, '\n'), step); err != nil {
		return fmt.Errorf("writing record %s: %w", filepath.Base(path), err)
	}
	return nil
}

// readRecord decodes the record at path into v, refusing unknown fields:
// a record this version does not understand is not guessed at.
func readRecord(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("record %s: %w", path, err)
	}
	return nil
}

// removeDurable removes path (absent is fine) and syncs its directory.
func removeDurable(path string) error { return durable.Remove(path, step) }

// emptyDir removes everything in dir (scratch left by a crash).
func emptyDir(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}
