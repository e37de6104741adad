package convert

import (
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// writeBehindBytes is how much a copy writes between two kicks of the
// target's writeback.
const writeBehindBytes = 32 << 20

// writeBehind starts the kernel's writeback of the target file while the
// copy is still going (sync_file_range SYNC_FILE_RANGE_WRITE, which
// neither waits for the disk nor promises durability), so that reading the
// source and writing the target overlap and the final fdatasync has little
// left to do. It is only a hint: durability still comes from that final
// flush, and a failure here changes nothing but speed.
type writeBehind struct {
	f       *os.File
	written atomic.Int64 // bytes written since the last kick
	busy    atomic.Bool  // a kick is running
	wg      sync.WaitGroup
}

// newWriteBehind opens path for the hints; nil (no hints) if it cannot.
func newWriteBehind(path string) *writeBehind {
	if path == "" {
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	return &writeBehind{f: f}
}

// wrote records n bytes written and kicks writeback every
// writeBehindBytes, in the background.
func (w *writeBehind) wrote(n int64) {
	if w == nil || w.written.Add(n) < writeBehindBytes || !w.busy.CompareAndSwap(false, true) {
		return
	}
	w.written.Store(0)
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		defer w.busy.Store(false)
		_ = unix.SyncFileRange(int(w.f.Fd()), 0, 0, unix.SYNC_FILE_RANGE_WRITE)
	}()
}

// close waits for a running kick and closes the file.
func (w *writeBehind) close() {
	if w == nil {
		return
	}
	w.wg.Wait()
	w.f.Close()
}
