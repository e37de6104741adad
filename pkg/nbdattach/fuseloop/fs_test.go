package fuseloop

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
)

// A file system on the device: its barriers reach the backend as Flush,
// and fstrim's discards as deallocating WriteZeroes (see the package doc
// for why not Trim).
func TestExt4FlushAndTrimReachBackend(t *testing.T) {
	testtools.Need(t, "mkfs.ext4", "e2fsck", "mount", "umount", "sync", "fstrim")
	b := newBackend(t, 128<<20)
	a := attach(t, b, 4096)
	run(t, "mkfs.ext4", "-q", "-F", "-E", "nodiscard", a.Device())
	mnt := filepath.Join(t.TempDir(), "ext4")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	run(t, "mount", a.Device(), mnt)
	defer func() {
		if mounted(t, mnt) {
			run(t, "umount", mnt)
		}
	}()

	flushes := b.flushes.Load()
	data := make([]byte, 1<<20)
	for i := range 16 {
		for j := range data {
			data[j] = byte(i + j)
		}
		if err := os.WriteFile(filepath.Join(mnt, fmt.Sprint(i)), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	run(t, "sync")
	if b.flushes.Load() == flushes {
		t.Errorf("sync on ext4 sent no Flush to the backend")
	}

	for i := range 16 {
		if err := os.Remove(filepath.Join(mnt, fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	run(t, "sync")
	holes, trims := b.holeZeroes.Load(), b.trims.Load()
	run(t, "fstrim", mnt)
	if b.holeZeroes.Load() == holes {
		t.Errorf("fstrim sent no deallocating WriteZeroes to the backend")
	}
	if b.trims.Load() != trims {
		t.Errorf("fstrim reached Trim, which does not promise zeros")
	}
	run(t, "umount", mnt)
	run(t, "e2fsck", "-fn", a.Device())
}
