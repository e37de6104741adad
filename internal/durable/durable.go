// Package durable holds the small file-system steps that make a change
// survive a crash, shared by the driver's store and its image importer.
// It must not import any package of this module. (The engine keeps its
// own: its fault-injection sweep lists every I/O site of pkg/qcow2.)
package durable

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
)

// SyncDir makes the names in dir durable: an fsync of the directory, the
// step after a create, rename or remove that must survive a crash.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// WriteFile replaces the file at path with data, atomically and durably:
// a temporary file in the same directory is written and fsynced, renamed
// over path, and the directory is fsynced. A crash leaves either the old
// file or the new one, never a mix; a leftover temporary is named
// ".<base>.tmp-*". hook, if set, is called after the temporary is
// written ("record written") and after the rename ("record renamed"),
// for crash tests.
func WriteFile(path string, data []byte, hook func(step string)) error {
	if hook == nil {
		hook = func(string) {}
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		hook("record written")
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	hook("record renamed")
	return SyncDir(dir)
}

// Remove removes path (absent is fine) and syncs its directory; hook, if
// set, is called between the two ("record removed").
func Remove(path string, hook func(step string)) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if hook != nil {
		hook("record removed")
	}
	return SyncDir(filepath.Dir(path))
}
