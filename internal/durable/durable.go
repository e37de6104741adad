// Package durable holds the small file-system steps that make a change
// survive a crash, shared by the driver's store and its image importer.
// It must not import any package of this module. (The engine keeps its
// own: its fault-injection sweep lists every I/O site of pkg/qcow2.)
package durable

import "os"

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
