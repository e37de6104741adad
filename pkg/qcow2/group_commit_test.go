package qcow2_test

// Group commit (group_commit.go): copy-on-write allocations wait for their
// data sync without the image lock. These tests run many such writers at
// once, with syncs slowed down so that the windows between a writer's data
// and its L2 entry are wide, and check what other operations see.

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// slowSyncFile makes every Sync take a while, as on a real disk.
type slowSyncFile struct{ qcow2.File }

func (f slowSyncFile) Sync() error {
	time.Sleep(2 * time.Millisecond)
	return f.File.Sync()
}

// openCOWOverlay creates a raw base of size bytes filled with baseByte
// and a qcow2 overlay over it with 64 KiB clusters, opened with slow syncs.
func openCOWOverlay(t *testing.T, size int64) (*qcow2.Image, string, []byte) {
	t.Helper()
	dir := t.TempDir()
	base := bytes.Repeat([]byte{0xb5}, int(size))
	if err := os.WriteFile(filepath.Join(dir, "base.raw"), base, 0o644); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "top.qcow2")
	if err := qcow2.Create(path, qcow2.CreateOptions{BackingFile: "base.raw", BackingFormat: "raw"}); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	img, err := qcow2.OpenFile(slowSyncFile{qcow2.NewOSFile(f)}, path, qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return img, path, base
}

// checkClean closes img and requires the image to check clean: no
// corruption and no leaks (a cluster freed twice or never shows here).
func checkClean(t *testing.T, img *qcow2.Image, path string) {
	t.Helper()
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	requireCheck(t, path, false)
}

// requireCheck requires the closed image at path to check without errors
// or corruption, and without leaks unless leaksOK, and returns the result.
func requireCheck(t *testing.T, path string, leaksOK bool) *qcow2.CheckResult {
	t.Helper()
	res, err := qcow2.Check(path, qcow2.CheckOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.CheckErrors != 0 || res.Corruptions != 0 || (res.Leaks != 0 && !leaksOK) {
		t.Fatalf("check: %d errors, %d corruptions, %d leaks: %v", res.CheckErrors, res.Corruptions, res.Leaks, res.Messages)
	}
	return res
}

// TestConcurrentCOWSameCluster: 16 writers each write their own 4 KiB slot
// of the same clusters at once, so every cluster's first allocation is in
// flight while the others arrive. A writer that allocated the cluster again
// from the old mapping would copy the backing data over the first one's
// slot; readers meanwhile must see each byte of a slot old or new, never
// anything else. A read racing a write of the same slot may see a mix of the
// two: Linux copies a buffered pread and pwrite of one page without a common
// lock, and a block device promises nothing for overlapping requests in
// flight either (CI saw "[0,64) old [64,4096) new").
func TestConcurrentCOWSameCluster(t *testing.T) {
	const cs, slot, clusters, writers = 64 << 10, 4 << 10, 8, 16
	img, path, base := openCOWOverlay(t, clusters*cs)
	data := func(w int) []byte { return bytes.Repeat([]byte{byte(0x10 + w)}, slot) }

	stop := make(chan struct{})
	var readers sync.WaitGroup
	for r := range 2 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			buf := make([]byte, slot)
			for i := r; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				c, w := i%clusters, (i/clusters)%writers
				if _, err := img.ReadAt(buf, int64(c*cs+w*slot)); err != nil {
					t.Error(err)
					return
				}
				if !oldOrNew(buf, base[0], data(w)[0]) {
					t.Errorf("cluster %d slot %d reads bytes neither old nor new: %s", c, w, describeBytes(buf, base[0], data(w)[0]))
					return
				}
			}
		}()
	}
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range clusters {
				c := (i + w) % clusters // not all in the same order
				if _, err := img.WriteAt(data(w), int64(c*cs+w*slot)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	readers.Wait()
	buf := make([]byte, slot)
	for c := range clusters {
		for w := range writers {
			if _, err := img.ReadAt(buf, int64(c*cs+w*slot)); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf, data(w)) {
				t.Fatalf("cluster %d slot %d: writer %d's data lost (reads %#x...)", c, w, w, buf[0])
			}
		}
	}
	checkClean(t, img, path)
}

// TestConcurrentCOWWithMetadataOps: copy-on-write allocations from
// clusters shared with a snapshot run while other goroutines discard,
// zero and snapshot the same clusters. Those operations change the
// mappings the writers replace: were they to run while an allocation waits
// for its sync, the old cluster would lose a reference twice (or a write
// would land in a table a snapshot shares), which check reports.
func TestConcurrentCOWWithMetadataOps(t *testing.T) {
	const cs, clusters = 64 << 10, 16
	img, path, _ := openCOWOverlay(t, clusters*cs)
	fill := bytes.Repeat([]byte{0x3c}, clusters*cs)
	if _, err := img.WriteAt(fill, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := img.CreateSnapshot("s0"); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	run := func(n int, op func(i int) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range n {
				if err := op(i); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	p := bytes.Repeat([]byte{0x77}, 4<<10)
	for w := range 8 {
		run(3*clusters, func(i int) error {
			_, err := img.WriteAt(p, int64((i*5+w)%clusters*cs+w*len(p)))
			return err
		})
	}
	run(clusters, func(i int) error { return img.Discard(int64(i*3%clusters*cs), cs) })
	run(clusters, func(i int) error { return img.WriteZeroes(int64(i*7%clusters*cs), cs, false) })
	run(3, func(i int) error {
		_, err := img.CreateSnapshot("s" + string(rune('1'+i)))
		return err
	})
	run(4, func(int) error { return img.Flush() })
	wg.Wait()
	checkClean(t, img, path)
}

// oldOrNew reports whether every byte of buf is old or new.
func oldOrNew(buf []byte, old, new byte) bool {
	for _, b := range buf {
		if b != old && b != new {
			return false
		}
	}
	return true
}

// describeBytes summarizes buf as runs of bytes, naming old and new.
func describeBytes(buf []byte, old, new byte) string {
	var out []string
	for i := 0; i < len(buf); {
		j := i
		for j < len(buf) && buf[j] == buf[i] {
			j++
		}
		name := fmt.Sprintf("%#x", buf[i])
		switch buf[i] {
		case old:
			name = "old"
		case new:
			name = "new"
		}
		out = append(out, fmt.Sprintf("[%d,%d) %s", i, j, name))
		i = j
	}
	return strings.Join(out, " ")
}
