package nbdattach

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// ConnServer serves one kernel connection in NBD transmission mode until it
// ends (Server.ServeTransmission). The kernel client never negotiates:
// Attach tells the kernel the export's size and flags itself, so the
// server starts at the first request.
type ConnServer func(conn net.Conn) error

// Attachment is a backend attached to a kernel nbd device and served by
// this process.
type Attachment struct {
	Index int
	Path  string // "/dev/nbdN"
	// Reattached is true when the device already existed with this backend
	// identifier (a restarted server) and got new sockets by RECONFIGURE.
	Reattached bool
	// Netlink is false when the legacy ioctl interface is in use.
	Netlink bool

	opts  AttachOptions
	serve ConnServer
	ioctl *ioctlDevice
	lock  *backendLock
	done  chan struct{} // closed when every connection has ended and the lock is released

	size     atomic.Uint64 // the device size as last set (Size, Resize)
	resizeMu sync.Mutex

	wg       sync.WaitGroup
	mu       sync.Mutex
	stopping bool
	errs     []error
	relinks  []time.Time
}

// Relinks allowed within relinkWindow before a broken connection is given
// up (the device then fails I/O after DeadConnTimeout).
const (
	maxRelinks   = 10
	relinkWindow = time.Minute
)

// Attach serves a backend to a kernel nbd device: it makes one socketpair
// per connection, serves our ends with serve, and gives the other ends to
// the kernel. It holds the backend identifier's lock (backend_lock.go)
// until every connection has ended, and fails with ErrServed while
// another process holds it. With netlink, a device that already carries
// opts.BackendID is re-adopted with RECONFIGURE instead of a new CONNECT,
// so a restarted server continues where the old one died (readopt.go).
func Attach(opts AttachOptions, serve ConnServer) (*Attachment, error) {
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	lock, err := lockBackend(opts.BackendID)
	if err != nil {
		return nil, err
	}
	a := &Attachment{opts: opts, serve: serve, lock: lock, done: make(chan struct{})}
	if err := a.attach(); err != nil {
		lock.release()
		return nil, err
	}
	go func() {
		a.wg.Wait()
		a.lock.release()
		close(a.done)
	}()
	return a, nil
}

func (a *Attachment) attach() error {
	if err := SetIOFlusher(); err != nil {
		a.opts.Logf("warning: %v", err)
	}
	if !a.opts.UseIoctl {
		nl, err := dialNetlink()
		switch {
		case err == nil:
			a.Netlink = true
			defer nl.Close()
			return a.attachNetlink(nl)
		case errors.Is(err, ErrNoNetlinkFamily):
			a.opts.Logf("no nbd netlink family: falling back to ioctls (no backend identifier, no reattach)")
		default:
			return err
		}
	}
	return a.attachIoctl()
}

func (a *Attachment) attachNetlink(nl *netlinkClient) error {
	existing, found, err := FindByBackend(a.opts.SysBlock, a.opts.BackendID)
	switch {
	case err != nil:
		return err
	case !found:
		return a.connectNetlink(nl)
	}
	if index := a.opts.deviceIndex(); index >= 0 && index != existing.Index {
		return fmt.Errorf("nbdattach: backend %q is already attached to %s, not %s", a.opts.BackendID, existing.Path, a.opts.Device)
	}
	grow, err := readoptSize(existing, a.opts.Size)
	if err != nil {
		return err
	}
	socks, err := a.reconfigureTaken(nl, a.opts.kernelConfig(existing.Index), grow)
	if err != nil {
		return err
	}
	a.Index, a.Path, a.Reattached = existing.Index, existing.Path, true
	a.size.Store(uint64(existing.Size))
	if grow > 0 {
		if err := a.checkKernelSize(grow); err != nil {
			// The device is ours now; it serves its old size.
			a.opts.Logf("warning: %s: not grown to the image's %d bytes: %v", a.Path, grow, err)
		} else {
			a.opts.Logf("%s: grown from %d to %d bytes, the image's size", a.Path, existing.Size, grow)
			a.size.Store(grow)
		}
	}
	for _, s := range socks {
		a.startSlot(s)
	}
	return nil
}

// connectNetlink configures a new device with CONNECT.
func (a *Attachment) connectNetlink(nl *netlinkClient) error {
	socks, err := newKernelSockets(a.opts.Connections)
	if err != nil {
		return err
	}
	index, err := nl.connect(a.opts.kernelConfig(a.opts.deviceIndex()), kernelFDs(socks))
	if err != nil {
		closeKernelSockets(socks)
		return err
	}
	a.Index, a.Path = index, "/dev/"+deviceName(index)
	a.size.Store(a.opts.Size)
	for _, s := range socks {
		a.startSlot(s)
	}
	return nil
}

// startSlot serves one socket, and when its connection breaks while the
// device is still ours, hands the kernel a replacement.
func (a *Attachment) startSlot(s *kernelSocket) {
	s.releaseKernelEnd()
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		for s != nil {
			err := a.serve(s.conn)
			s.conn.Close()
			if a.isStopping() {
				return
			}
			s = a.relink(err)
		}
	}()
}

// relink replaces a broken connection through RECONFIGURE: the kernel
// marks a connection dead when it breaks or a request times out, and holds
// I/O for DeadConnTimeout waiting for a new one.
func (a *Attachment) relink(cause error) *kernelSocket {
	if !a.Netlink {
		// NBD_DO_IT ends with the connections; a clean end is a detach.
		if cause != nil {
			a.addErr(fmt.Errorf("nbdattach: %s: connection lost (ioctl mode cannot reconnect): %w", a.Path, cause))
		}
		return nil
	}
	if !a.allowRelink() {
		a.addErr(fmt.Errorf("nbdattach: %s: connection lost %d times within %v, giving up (last: %v)", a.Path, maxRelinks, relinkWindow, cause))
		return nil
	}
	if !a.stillConfigured() {
		// Disconnected (by img detach, say): nothing to serve any more.
		return nil
	}
	if cause == nil {
		cause = errors.New("end of file")
	}
	a.opts.Logf("%s: connection lost (%v); reconnecting", a.Path, cause)
	s, err := newKernelSocket()
	if err != nil {
		a.addErr(err)
		return nil
	}
	if err := reconfigureOnce(a.opts.kernelConfig(a.Index), s.kernelFD); err != nil {
		s.closeAll()
		if a.configured() {
			a.addErr(err)
		}
		// Else the device was being torn down after all (a disconnect
		// that outlasted detachGrace on a stalled host): no error.
		return nil
	}
	s.releaseKernelEnd()
	return s
}

// detachGrace is how long a device whose connection ended may take to
// drop its configuration before the end counts as a broken link. The
// server returns nil both for NBD_CMD_DISC and for end of file, so a
// disconnect is recognised by the kernel tearing the device down, which it
// does as soon as the connections' receive threads see the shutdown.
const detachGrace = time.Second

// stillConfigured reports whether the device keeps our backend identifier
// for detachGrace: then it is waiting for a new connection. (A host
// stalled for longer may still be tearing it down: relink then sees its
// RECONFIGURE refused and the device gone, and takes that as the detach.)
func (a *Attachment) stillConfigured() bool {
	deadline := time.Now().Add(detachGrace)
	for a.configured() {
		if time.Now().After(deadline) {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

// configured reports whether the device is configured with our backend
// identifier now.
func (a *Attachment) configured() bool {
	dev, err := readDevice(a.opts.SysBlock, deviceName(a.Index), a.Index)
	return err == nil && dev.Configured() && dev.Backend == a.opts.BackendID
}

func (a *Attachment) allowRelink() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := time.Now()
	recent := a.relinks[:0]
	for _, t := range a.relinks {
		if now.Sub(t) < relinkWindow {
			recent = append(recent, t)
		}
	}
	a.relinks = recent
	if len(recent) >= maxRelinks {
		return false
	}
	a.relinks = append(a.relinks, now)
	return true
}

func (a *Attachment) isStopping() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.stopping
}

func (a *Attachment) addErr(err error) {
	a.mu.Lock()
	a.errs = append(a.errs, err)
	a.mu.Unlock()
}

// Wait blocks until every connection has ended (the device was detached,
// or its connections broke beyond repair) and the backend's lock is
// released, and returns what went wrong.
func (a *Attachment) Wait() error {
	<-a.done
	a.mu.Lock()
	defer a.mu.Unlock()
	return errors.Join(a.errs...)
}

// Detach disconnects the device (the kernel sends NBD_CMD_DISC on every
// connection after the requests in flight) and waits for the connections
// to end.
func (a *Attachment) Detach() error {
	a.mu.Lock()
	a.stopping = true
	a.mu.Unlock()
	var err error
	if a.Netlink {
		_, err = Detach(a.opts.SysBlock, a.Path)
	} else {
		err = a.ioctl.disconnect()
	}
	return errors.Join(err, a.Wait())
}

// Detach disconnects the device named by arg ("/dev/nbdN", "nbdN" or a
// backend identifier) on behalf of another process: its server sees
// NBD_CMD_DISC and ends.
func Detach(sysBlock, arg string) (Device, error) {
	dev, err := ResolveDevice(sysBlock, arg)
	if err != nil {
		return Device{}, err
	}
	nl, err := dialNetlink()
	if errors.Is(err, ErrNoNetlinkFamily) {
		return dev, disconnectByIoctl(dev.Path)
	}
	if err != nil {
		return Device{}, err
	}
	defer nl.Close()
	return dev, nl.disconnect(dev.Index)
}

// Status asks the kernel which nbd devices it has and which are
// connected (netlink STATUS).
func Status() ([]DeviceStatus, error) {
	nl, err := dialNetlink()
	if err != nil {
		return nil, err
	}
	defer nl.Close()
	return nl.status(-1)
}

// reconfigureOnce hands one socket to a device over a netlink connection of
// its own (relinks happen from several goroutines, long after Attach).
func reconfigureOnce(cfg kernelConfig, fd int) error {
	nl, err := dialNetlink()
	if err != nil {
		return err
	}
	defer nl.Close()
	return nl.reconfigure(cfg, []int{fd}, 0)
}
