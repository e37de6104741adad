package nbdattach

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Size is the device size in bytes as this attachment last set it.
func (a *Attachment) Size() uint64 { return a.size.Load() }

// Resize grows the kernel device to newSize bytes while it is in use.
// The export it serves must take requests up to newSize already
// (Server.ResizeExport): the kernel may send them before Resize returns.
//
// With netlink it is a RECONFIGURE carrying NBD_ATTR_SIZE_BYTES: the
// kernel sets the capacity, logs "detected capacity change" and sends a
// change uevent (RESIZE=1); the block device's size (BLKGETSIZE64, sysfs)
// is the new one when the request returns. The ioctl interface is refused
// on netlink devices, so a device attached by ioctl grows by
// NBD_SET_SIZE_BLOCKS instead. Either way Resize then reads the size back
// from sysfs: a kernel that ignored the request (netlink RECONFIGURE took
// no size before 2019, Linux 5.3) is an error, not a silent no-op.
//
// newSize must be a multiple of the block size; a smaller size than the
// current one fails with ErrShrink.
func (a *Attachment) Resize(newSize uint64) error {
	a.resizeMu.Lock()
	defer a.resizeMu.Unlock()
	if err := a.checkResize(newSize); err != nil || newSize == a.Size() {
		return err
	}
	var err error
	if a.Netlink {
		err = reconfigureSize(kernelConfig{index: a.Index, backendID: a.opts.BackendID}, newSize)
	} else {
		err = resizeByIoctl(a.Path, newSize/a.opts.BlockSize)
	}
	if err == nil {
		err = a.checkKernelSize(newSize)
	}
	if err != nil {
		return fmt.Errorf("nbdattach: resize %s to %d bytes: %w", a.Path, newSize, err)
	}
	a.size.Store(newSize)
	return nil
}

// checkResize refuses what Resize cannot do before the kernel is asked.
func (a *Attachment) checkResize(newSize uint64) error {
	cur := a.Size()
	switch {
	case a.isStopping():
		return fmt.Errorf("nbdattach: resize %s: the device is being detached", a.Path)
	case newSize < cur:
		return fmt.Errorf("%w: %s has %d bytes, asked for %d", ErrShrink, a.Path, cur, newSize)
	case newSize%a.opts.BlockSize != 0:
		return fmt.Errorf("nbdattach: resize %s: %d bytes is not a multiple of the block size %d", a.Path, newSize, a.opts.BlockSize)
	}
	return nil
}

// checkKernelSize reads the device's size back from sysfs.
func (a *Attachment) checkKernelSize(want uint64) error {
	dev, err := readDevice(a.opts.SysBlock, deviceName(a.Index), a.Index)
	if err != nil {
		return err
	}
	if uint64(dev.Size) != want {
		return fmt.Errorf("the kernel kept %s at %d bytes (netlink RECONFIGURE applies a size only since 2019, Linux 5.3)", a.Path, dev.Size)
	}
	return nil
}

// reconfigureSize sends a RECONFIGURE with the size and no sockets.
func reconfigureSize(cfg kernelConfig, size uint64) error {
	nl, err := dialNetlink()
	if err != nil {
		return err
	}
	defer nl.Close()
	return nl.reconfigure(cfg, nil, size)
}

// resizeByIoctl sets the size of a device attached by ioctl, on a
// descriptor of its own: the one NBD_DO_IT blocks on is closed by its
// goroutine when the device goes away. NBD_DO_IT releases the device's
// configuration lock while it waits, so the kernel takes the ioctl
// meanwhile. The size goes in blocks: the ioctl's argument is a long.
func resizeByIoctl(path string, blocks uint64) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), ioctlSetSizeBlocks, int(blocks)); err != nil {
		return fmt.Errorf("NBD_SET_SIZE_BLOCKS: %w", err)
	}
	return nil
}
