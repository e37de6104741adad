package store

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/csi-qcow2/csi-qcow2/internal/durable"
)

// The directories of a store root. Layer files are named by layer IDs the
// store makes itself (newLayerID); object records by object IDs that
// passed validID. Nothing a request names reaches a path otherwise.
const (
	imagesDir    = "images"    // golden bases, <sha256>.qcow2, read-only
	layersDir    = "layers"    // volume tops and frozen layers, <layer>.qcow2
	volumesDir   = "volumes"   // volume records, <id>.json
	snapshotsDir = "snapshots" // snapshot records, <id>.json
	tmpDir       = "tmp"       // scratch: record and import temporaries
)

type layout struct{ root string }

func (l layout) dir(name string) string { return filepath.Join(l.root, name) }

func (l layout) layerPath(id string) string {
	return filepath.Join(l.root, layersDir, id+".qcow2")
}

func (l layout) imagePath(sha string) string {
	return filepath.Join(l.root, imagesDir, sha+".qcow2")
}

// backingName is how a top in layers/ names a backing layer: relative,
// so that the store can move as a whole, and resolving to the same file
// from every directory of the store (the engine's Freeze relies on it).
func backingName(dir, id string) string {
	return filepath.Join("..", dir, id+".qcow2")
}

func (l layout) volumeRecord(id string) string {
	return filepath.Join(l.root, volumesDir, id+".json")
}

func (l layout) snapshotRecord(id string) string {
	return filepath.Join(l.root, snapshotsDir, id+".json")
}

// make creates the store's directories (0700: layers hold tenants' data).
func (l layout) make() error {
	for _, d := range []string{imagesDir, layersDir, volumesDir, snapshotsDir, tmpDir} {
		if err := os.MkdirAll(l.dir(d), 0o700); err != nil {
			return fmt.Errorf("store directory: %w", err)
		}
	}
	return durable.SyncDir(l.root)
}
