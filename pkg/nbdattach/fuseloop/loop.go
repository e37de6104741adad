package fuseloop

import (
	"os"

	"github.com/csi-qcow2/csi-qcow2/internal/loopdev"
)

// bindLoop binds a free loop device to the file at path with direct I/O
// and the given logical block size, read-only if asked (loopdev.Bind).
func bindLoop(path string, blockSize int, readOnly bool) (string, *os.File, error) {
	return loopdev.Bind(path, loopdev.Options{BlockSize: blockSize, ReadOnly: readOnly, DirectIO: true})
}

// loopBoundTo reports whether dev is still bound to the file at path. Once
// the binding cleared, the device may already serve someone else's file.
func loopBoundTo(dev, path string) bool { return loopdev.Backing(dev) == path }
