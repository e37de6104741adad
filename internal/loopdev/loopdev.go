// Package loopdev binds files to Linux loop devices and reads what they
// are bound to: the FUSE attach path (pkg/nbdattach/fuseloop) and the
// tests' thin filesystems (internal/testtools) share it. It must not
// import any package of this module.
package loopdev

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Options say how Bind configures the device.
type Options struct {
	BlockSize int  // logical block size; 0 is the kernel's default (512)
	ReadOnly  bool // a read-only device (and the file opened read-only)
	DirectIO  bool // the device reads and writes the file with O_DIRECT
}

// Bind binds a free loop device to the file at path and returns the
// device's path and an open descriptor of it. The binding has
// LO_FLAGS_AUTOCLEAR: it goes away when the device's last opener lets go
// (the returned descriptor, or a filesystem mounted on the device), so
// closing what holds it frees the device even after its user died.
func Bind(path string, opts Options) (string, *os.File, error) {
	mode, flags := os.O_RDWR, uint32(unix.LO_FLAGS_AUTOCLEAR)
	if opts.DirectIO {
		flags |= unix.LO_FLAGS_DIRECT_IO
	}
	if opts.ReadOnly {
		mode, flags = os.O_RDONLY, flags|unix.LO_FLAGS_READ_ONLY
	}
	backing, err := os.OpenFile(path, mode, 0)
	if err != nil {
		return "", nil, err
	}
	defer backing.Close() // the device holds its own reference
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return "", nil, err
	}
	defer ctl.Close()
	// Another process may take the device between GET_FREE and
	// CONFIGURE, which then fails with EBUSY: ask again.
	for range 64 {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return "", nil, fmt.Errorf("LOOP_CTL_GET_FREE: %w", err)
		}
		dev := fmt.Sprintf("/dev/loop%d", n)
		f, err := os.OpenFile(dev, os.O_RDWR, 0)
		if err != nil {
			return "", nil, err
		}
		cfg := unix.LoopConfig{Fd: uint32(backing.Fd()), Size: uint32(opts.BlockSize)}
		cfg.Info.Flags = flags
		copy(cfg.Info.File_name[:len(cfg.Info.File_name)-1], path)
		err = unix.IoctlLoopConfigure(int(f.Fd()), &cfg)
		if err == nil {
			return dev, f, nil
		}
		f.Close()
		if !errors.Is(err, unix.EBUSY) {
			return "", nil, fmt.Errorf("LOOP_CONFIGURE %s: %w", dev, err)
		}
	}
	return "", nil, errors.New("no loop device stayed free long enough to bind it")
}

// Sysfs reads one attribute of the loop device dev ("" if the device is
// not bound: the loop directory exists only while it is).
func Sysfs(dev, attr string) string {
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop", attr))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// Backing returns the file dev is bound to, "" if it is free. Once a
// binding cleared, the device may serve someone else's file: compare.
func Backing(dev string) string {
	return strings.TrimSuffix(Sysfs(dev, "backing_file"), " (deleted)")
}
