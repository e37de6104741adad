package nbdattach

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// The legacy ioctl interface (uapi linux/nbd.h: _IO(0xab, n)), used only
// when the kernel has no nbd netlink family. It records no backend
// identifier and cannot hand a configured device new sockets, so a device
// attached this way dies with its server.
const (
	ioctlSetSock       = 0xab00
	ioctlSetBlksize    = 0xab01
	ioctlDoIt          = 0xab03
	ioctlClearSock     = 0xab04
	ioctlSetSizeBlocks = 0xab07
	ioctlDisconnect    = 0xab08
	ioctlSetTimeout    = 0xab09
	ioctlSetFlags      = 0xab0a
)

// ioctlDevice is an open /dev/nbdN configured through ioctls.
type ioctlDevice struct {
	f *os.File
}

func (a *Attachment) attachIoctl() error {
	index := a.opts.deviceIndex()
	if index < 0 {
		var err error
		if index, err = firstFreeDevice(a.opts.SysBlock); err != nil {
			return err
		}
	}
	path := "/dev/nbd" + strconv.Itoa(index)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("nbdattach: %w", err)
	}
	socks, err := newKernelSockets(a.opts.Connections)
	if err != nil {
		f.Close()
		return err
	}
	if err := configureByIoctl(f, a.opts, kernelFDs(socks)); err != nil {
		unix.IoctlSetInt(int(f.Fd()), ioctlClearSock, 0)
		f.Close()
		closeKernelSockets(socks)
		return fmt.Errorf("nbdattach: configure %s by ioctl: %w", path, err)
	}
	dev := &ioctlDevice{f: f}
	a.ioctl, a.Index, a.Path = dev, index, path
	a.size.Store(a.opts.Size)
	for _, s := range socks {
		a.startSlot(s)
	}
	ended := make(chan struct{})
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		defer close(ended)
		if err := dev.doIt(); err != nil && !a.isStopping() {
			a.addErr(fmt.Errorf("nbdattach: NBD_DO_IT on %s: %w", path, err))
		}
	}()
	return a.waitIoctlStarted(ended)
}

// waitIoctlStarted returns once NBD_DO_IT has started the device (the
// kernel creates the pid attribute, then sets the capacity), as CONNECT
// has when it returns: before that the device has no size and refuses a
// resize. If NBD_DO_IT ends first, its error is returned once the
// connections have ended.
func (a *Attachment) waitIoctlStarted(ended <-chan struct{}) error {
	for {
		dev, err := readDevice(a.opts.SysBlock, deviceName(a.Index), a.Index)
		if err == nil && dev.Configured() && uint64(dev.Size) == a.opts.Size {
			return nil
		}
		select {
		case <-ended:
			a.wg.Wait()
			a.mu.Lock()
			err := errors.Join(a.errs...)
			a.mu.Unlock()
			if err != nil {
				return err
			}
			return fmt.Errorf("nbdattach: %s: NBD_DO_IT ended before the device started", a.Path)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func configureByIoctl(f *os.File, o AttachOptions, fds []int) error {
	fd := int(f.Fd())
	steps := []struct {
		req uint
		val uint64
	}{
		{ioctlSetBlksize, o.BlockSize},
		{ioctlSetSizeBlocks, o.Size / o.BlockSize},
		{ioctlSetTimeout, ceilSeconds(o.Timeout)},
		{ioctlSetFlags, uint64(o.Flags)},
	}
	for _, s := range steps {
		if err := unix.IoctlSetInt(fd, s.req, int(s.val)); err != nil {
			return fmt.Errorf("ioctl %#x: %w", s.req, err)
		}
	}
	for _, sfd := range fds {
		if err := unix.IoctlSetInt(fd, ioctlSetSock, sfd); err != nil {
			return fmt.Errorf("NBD_SET_SOCK: %w", err)
		}
	}
	return nil
}

// doIt runs NBD_DO_IT, which blocks until the device is disconnected, then
// clears the device's sockets so it can be configured again.
func (d *ioctlDevice) doIt() error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	fd := int(d.f.Fd())
	err := unix.IoctlSetInt(fd, ioctlDoIt, 0)
	unix.IoctlSetInt(fd, ioctlClearSock, 0)
	d.f.Close()
	return err
}

func (d *ioctlDevice) disconnect() error {
	return disconnectByIoctl(d.f.Name())
}

func disconnectByIoctl(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("nbdattach: %w", err)
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), ioctlDisconnect, 0); err != nil {
		return fmt.Errorf("nbdattach: NBD_DISCONNECT on %s: %w", path, err)
	}
	return nil
}

// firstFreeDevice picks the lowest nbd device without a configuration.
func firstFreeDevice(sysBlock string) (int, error) {
	devs, err := ListDevices(sysBlock)
	if err != nil {
		return -1, err
	}
	for _, d := range devs {
		if !d.Configured() && d.Size == 0 {
			return d.Index, nil
		}
	}
	return -1, errors.New("nbdattach: no free nbd device (load the nbd module with more nbds_max)")
}
