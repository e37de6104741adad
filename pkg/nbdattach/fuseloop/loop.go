package fuseloop

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// bindLoop binds a free loop device to the file at path with direct I/O
// and the given logical block size, read-only if asked, and returns the device's path and an
// open descriptor of it. The binding has LO_FLAGS_AUTOCLEAR: it goes away
// when the device's last opener lets go, so holding the descriptor keeps
// it, and closing it after LOOP_CLR_FD frees it even if a user of the
// device still had it open at that moment (the kernel then clears it on
// that user's close).
func bindLoop(path string, blockSize int, readOnly bool) (string, *os.File, error) {
	mode, flags := os.O_RDWR, uint32(unix.LO_FLAGS_AUTOCLEAR|unix.LO_FLAGS_DIRECT_IO)
	if readOnly {
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
		cfg := unix.LoopConfig{Fd: uint32(backing.Fd()), Size: uint32(blockSize)}
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
	return "", nil, errors.New("fuseloop: no loop device stayed free long enough to bind it")
}

// loopSysfs reads one attribute of the loop device dev ("" if the device
// is not bound: the loop directory exists only while it is).
func loopSysfs(dev, attr string) string {
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop", attr))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// loopBoundTo reports whether dev is still bound to the file at path. Once
// the binding cleared, the device may already serve someone else's file.
func loopBoundTo(dev, path string) bool {
	return strings.TrimSuffix(loopSysfs(dev, "backing_file"), " (deleted)") == path
}
