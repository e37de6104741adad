package qcow2

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/crashsim"
)

// failWriteAt fails the next WriteAt at failOff, once armed (-1: none).
type failWriteAt struct {
	*crashsim.Recorder
	failOff atomic.Int64
}

func (f *failWriteAt) WriteAt(p []byte, off int64) (int, error) {
	if off == f.failOff.Load() && f.failOff.CompareAndSwap(off, -1) {
		return 0, errors.New("injected EIO")
	}
	return f.Recorder.WriteAt(p, off)
}

// TestSharedL2CopyFailedL1WriteFreesNothing: a write into an L2 table
// shared with a snapshot copies the table, then writes the L1 entry that
// switches to the copy. When that L1 write fails the old table is still
// linked, so its free must not be queued: queued, it was applied at the
// next Flush (twice, after a retry) and dropped the refcount the snapshot
// holds to 0, and the cluster was later reused as data under the
// snapshot. (Found in the cold review of the frees' ordering, issue 9.)
func TestSharedL2CopyFailedL1WriteFreesNothing(t *testing.T) {
	const cs, size = 64 << 10, 2 << 20
	var f *failWriteAt
	img, r, dir := recordedImage(t, cs, size, func(r *crashsim.Recorder) File {
		f = &failWriteAt{Recorder: r}
		f.failOff.Store(-1)
		return f
	})
	defer img.Close()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	_, err := img.WriteAt(bytes.Repeat([]byte{1}, cs), 0)
	must(err)
	must(img.Flush())
	_, err = img.CreateSnapshot("s")
	must(err)

	f.failOff.Store(int64(img.hdr.L1TableOffset)) // L1 entry 0: the switch to the copy
	if _, err := img.WriteAt(bytes.Repeat([]byte{2}, cs), cs); err == nil {
		t.Fatal("the injected L1 write failure did not reach the caller")
	}
	_, err = img.WriteAt(bytes.Repeat([]byte{2}, cs), cs) // the retry
	must(err)
	must(img.Flush())
	live := filepath.Join(dir, "live.qcow2")
	must(os.WriteFile(live, r.Bytes(), 0o644))
	res, err := Check(live, CheckOptions{})
	must(err)
	if res.Corruptions != 0 || res.CheckErrors != 0 {
		t.Fatalf("after a failed L1 switch, a retry and a Flush: %d corruptions:\n%s", res.Corruptions, strings.Join(res.Messages, "\n"))
	}
	// New clusters enough that the allocator would reuse a wrongly freed one.
	for vi := int64(2); vi < size/cs; vi++ {
		_, err = img.WriteAt(bytes.Repeat([]byte{byte(10 + vi)}, cs), vi*cs)
		must(err)
	}
	must(img.Flush())
	v, err := img.OpenSnapshot("s")
	must(err)
	buf := make([]byte, cs)
	_, err = v.ReadAt(buf, 0)
	must(err)
	if !bytes.Equal(buf, bytes.Repeat([]byte{1}, cs)) {
		t.Fatalf("the snapshot's cluster 0 reads %#x..., want 0x01", buf[0])
	}
}
