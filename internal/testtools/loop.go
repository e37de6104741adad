package testtools

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// attachLoop binds a free loop device to the file at path and returns the
// device's path and an open descriptor of it. The binding clears itself
// (LO_FLAGS_AUTOCLEAR) when the device's last opener lets go: the
// filesystem mounted on it, or the returned descriptor if nothing was
// mounted. So unmounting is all it takes to free the device, even after
// the test that bound it died.
func attachLoop(path string) (string, *os.File, error) {
	backing, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return "", nil, err
	}
	defer backing.Close() // the device holds its own reference
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return "", nil, err
	}
	defer ctl.Close()
	// Other test processes bind devices too: one may take the device
	// between GET_FREE and CONFIGURE, which then fails with EBUSY.
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
		cfg := unix.LoopConfig{Fd: uint32(backing.Fd())}
		cfg.Info.Flags = unix.LO_FLAGS_AUTOCLEAR
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

// loopBacking returns the file the loop device dev is bound to, "" if
// it is free. The device may be bound to another test's file once this
// test's binding cleared: compare with the file.
func loopBacking(dev string) string {
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop", "backing_file"))
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(strings.TrimSpace(string(b)), " (deleted)")
}
