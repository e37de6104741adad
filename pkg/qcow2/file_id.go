package qcow2

import (
	"os"
	"syscall"
)

// fileID names a file by what the kernel knows it by, whatever path led
// to it: symlinks, hard links, "..", /proc/self/fd all arrive at the same
// device and inode.
type fileID struct{ dev, ino uint64 }

// statFileID returns the identity in fi; ok is false where the platform
// gives none.
func statFileID(fi os.FileInfo) (id fileID, ok bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileID{}, false
	}
	return fileID{dev: uint64(st.Dev), ino: st.Ino}, true
}

// openFileID returns the identity of an open file (fstat).
func openFileID(f *os.File) (fileID, bool) {
	fi, err := f.Stat()
	if err != nil {
		return fileID{}, false
	}
	return statFileID(fi)
}

// fileIDOf returns the identity of the host file under f, if it is one.
func fileIDOf(f File) (fileID, bool) {
	if o, ok := hostFile(f); ok {
		return openFileID(o.f)
	}
	return fileID{}, false
}

// pathFileID returns the identity of the file at path (following
// symlinks); ok is false if there is none.
func pathFileID(path string) (fileID, bool) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileID{}, false
	}
	return statFileID(fi)
}
