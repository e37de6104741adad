package testtools

import (
	"os"

	"github.com/csi-qcow2/csi-qcow2/internal/loopdev"
)

// attachLoop binds a free loop device to the file at path and returns the
// device's path and an open descriptor of it. The binding clears itself
// (LO_FLAGS_AUTOCLEAR) when the device's last opener lets go: the
// filesystem mounted on it, or the returned descriptor if nothing was
// mounted. So unmounting is all it takes to free the device, even after
// the test that bound it died.
func attachLoop(path string) (string, *os.File, error) {
	return loopdev.Bind(path, loopdev.Options{})
}

// loopBacking returns the file the loop device dev is bound to, "" if
// it is free. The device may be bound to another test's file once this
// test's binding cleared: compare with the file.
func loopBacking(dev string) string { return loopdev.Backing(dev) }
