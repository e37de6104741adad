package golden

import (
	"fmt"
	"io"
	"os"
	"syscall"
)

// openFile opens a file: source through os.Root, so that whatever the
// path or the links on the way say, only files under the root are read,
// and only regular files (a FIFO would block, a device never end).
func openFile(l location) (io.ReadCloser, int64, error) {
	root, err := os.OpenRoot(l.root)
	if err != nil {
		return nil, 0, fmt.Errorf("file root %s: %w", l.root, err)
	}
	defer root.Close()
	// O_NONBLOCK: opening a FIFO must not wait for a writer.
	f, err := root.OpenFile(l.rel, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		if hostFailure(err) {
			return nil, 0, fmt.Errorf("opening %s: %w", l.redacted(), err)
		}
		return nil, 0, invalidf("file %s under %s cannot be read: %v", l.rel, l.root, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("opening %s: %w", l.redacted(), err)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, 0, invalidf("file %s under %s is not a regular file (%v)", l.rel, l.root, st.Mode().Type())
	}
	return f, st.Size(), nil
}
