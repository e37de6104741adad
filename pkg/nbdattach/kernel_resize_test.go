package nbdattach

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
)

// An attached device grows while a block load runs on it: the kernel
// reports the new size (BLKGETSIZE64, sysfs), logs the capacity change and
// announces it with a change uevent carrying RESIZE=1; data written past
// the old end through a descriptor opened before the resize reads back
// and is in the file; the load goes on without an error. Through netlink
// (RECONFIGURE) and through the ioctl fallback (NBD_SET_SIZE_BLOCKS).
func TestKernelResizeUnderLoad(t *testing.T) {
	needKernelNBD(t)
	const oldSize, newSize = 16 << 20, 48 << 20
	for _, useIoctl := range []bool{false, true} {
		t.Run(fmt.Sprintf("ioctl=%v", useIoctl), func(t *testing.T) {
			kd := attachFile(t, oldSize, useIoctl)
			dev := openDirect(t, kd.att.Path)
			if got := blockSize64(t, dev); got != oldSize {
				t.Fatalf("BLKGETSIZE64 %d before the resize, want %d", got, oldSize)
			}
			load := startBlockLoad(t, kd.att.Path, 4<<20)
			testtools.WaitFor(t, "the load to pass two steps", func() bool { return load.steps.Load() >= 2 })
			ev := listenUevents(t)

			kd.grow(t, newSize)

			if got := blockSize64(t, dev); got != newSize {
				t.Errorf("BLKGETSIZE64 %d after the resize, want %d", got, newSize)
			}
			d, err := readDevice(DefaultSysBlock, deviceName(kd.att.Index), kd.att.Index)
			if err != nil || d.Size != newSize || kd.att.Size() != newSize {
				t.Errorf("sysfs size %d (%v), Attachment.Size %d, want %d", d.Size, err, kd.att.Size(), newSize)
			}
			name := deviceName(kd.att.Index)
			if !resizeUevent(ev.pending(t), name) {
				t.Errorf("no change uevent with RESIZE=1 for %s", name)
			}
			change := fmt.Sprintf("%s: detected capacity change from %d to %d", name, oldSize/512, newSize/512)
			if !strings.Contains(kernelLog(t), change) {
				t.Errorf("the kernel did not log %q", change)
			}

			// Past the old end, through the descriptor opened before.
			past := alignedBuf(1 << 20)
			for i := range past {
				past[i] = byte(i*7 + 3)
			}
			if _, err := dev.WriteAt(past, oldSize+8<<20); err != nil {
				t.Fatalf("write past the old end: %v", err)
			}
			back := alignedBuf(1 << 20)
			if _, err := dev.ReadAt(back, oldSize+8<<20); err != nil || !bytes.Equal(back, past) {
				t.Fatalf("read past the old end: %v (equal %v)", err, bytes.Equal(back, past))
			}
			inFile := make([]byte, 1<<20)
			if _, err := kd.backend.ReadAt(inFile, oldSize+8<<20); err != nil || !bytes.Equal(inFile, past) {
				t.Errorf("the file does not hold what was written past the old end (%v)", err)
			}
			if _, err := dev.WriteAt(past[:4096], newSize); err == nil {
				t.Error("a write past the new end succeeded")
			}

			steps := load.steps.Load()
			testtools.WaitFor(t, "the load to pass two more steps after the resize", func() bool { return load.steps.Load() >= steps+2 })
			if err := load.finish(); err != nil {
				t.Fatalf("the load failed: %v", err)
			}
		})
	}
}

// resizeUevent reports whether a change uevent with RESIZE=1 names the
// device.
func resizeUevent(events [][]string, name string) bool {
	for _, e := range events {
		if len(e) > 0 && strings.HasPrefix(e[0], "change@") && strings.HasSuffix(e[0], "/block/"+name) &&
			slices.Contains(e, "RESIZE=1") {
			return true
		}
	}
	return false
}

// A connection that breaks after a resize is replaced by a RECONFIGURE
// that carries no size: the device keeps its new size, and I/O past the
// old end goes through the new connection.
func TestKernelRelinkKeepsGrownSize(t *testing.T) {
	needKernelNBD(t)
	const oldSize, newSize = 16 << 20, 32 << 20
	kd := attachFile(t, oldSize, false)
	kd.grow(t, newSize)
	kd.conn(t, 0).Close() // the kernel sees end of file and marks the connection dead
	testtools.WaitFor(t, "the server to hand the kernel a new socket", func() bool { return kd.serves.Load() >= 2 })

	dev := openDirect(t, kd.att.Path)
	if got := blockSize64(t, dev); got != newSize {
		t.Fatalf("BLKGETSIZE64 %d after the relink, want %d", got, newSize)
	}
	buf := alignedBuf(64 << 10)
	for i := range buf {
		buf[i] = 0x5a
	}
	if _, err := dev.WriteAt(buf, newSize-64<<10); err != nil {
		t.Fatalf("write at the new end after the relink: %v", err)
	}
	back := alignedBuf(64 << 10)
	if _, err := dev.ReadAt(back, newSize-64<<10); err != nil || !bytes.Equal(back, buf) {
		t.Fatalf("read back after the relink: %v", err)
	}
}
