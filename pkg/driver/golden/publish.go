package golden

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"github.com/csi-qcow2/csi-qcow2/internal/durable"
	"golang.org/x/sys/unix"
)

// publishMode is the mode of a published image: golden images are never
// written again.
const publishMode = 0o444

// statAllocated is the space a file takes on its file system.
func statAllocated(st os.FileInfo) int64 {
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		return sys.Blocks * 512
	}
	return st.Size()
}

// syncFile makes the file at path durable (fsync: data, size and mode).
func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// publish moves the finished image tmp to final without replacing a file
// already there, and makes the move durable. existed reports that final
// was there already (another import of the same content won): tmp is then
// left to the caller to remove. tmp must be durable already.
func publish(tmp, final, dir string) (existed bool, err error) {
	err = unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, final, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		// A file system without RENAME_NOREPLACE: a hard link refuses
		// an existing name as well.
		if err = os.Link(tmp, final); err == nil {
			os.Remove(tmp)
		}
	}
	switch {
	case errors.Is(err, unix.EEXIST) || errors.Is(err, os.ErrExist):
		return true, nil
	case errors.Is(err, unix.EXDEV):
		return false, fmt.Errorf("publishing %s: TmpDir and Dir are on different file systems: %w", final, err)
	case err != nil:
		return false, fmt.Errorf("publishing %s: %w", final, err)
	}
	if err := durable.SyncDir(dir); err != nil {
		return false, fmt.Errorf("publishing %s: %w", final, err)
	}
	return false, nil
}
