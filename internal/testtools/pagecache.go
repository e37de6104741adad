package testtools

import (
	"errors"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// WriteBack writes the dirty pages of the file at path back to its
// storage, as the kernel's flusher thread may at any moment, and returns
// what that writeback reported. It syncs through a descriptor of its own:
// a failure is recorded for the file and still reported to the next
// fdatasync of every other descriptor, as one the flusher met would be.
func WriteBack(t testing.TB, path string) error {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return unix.Fdatasync(int(f.Fd()))
}

// DropCache evicts the clean cached pages of the file at path, as memory
// pressure does (dirty pages stay): what is read next comes from the
// storage, so a page whose writeback failed now reads as the storage has
// it. It returns once cachestat counts no clean page of the file.
func DropCache(t testing.TB, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd := int(f.Fd())
	// A page locked for a moment (a read in flight) survives one
	// FADV_DONTNEED: advise again until none is left.
	WaitFor(t, "the clean pages of "+path+" to leave the page cache", func() bool {
		if err := unix.Fadvise(fd, 0, 0, unix.FADV_DONTNEED); err != nil {
			t.Fatal(err)
		}
		var st unix.Cachestat_t
		err := unix.Cachestat(uint(fd), &unix.CachestatRange{}, &st, 0)
		if errors.Is(err, unix.ENOSYS) {
			return true // before Linux 6.5: trust the advice
		}
		if err != nil {
			t.Fatal(err)
		}
		return st.Cache == st.Dirty+st.Writeback
	})
}
