package nbdattach

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
)

// ErrNoNetlinkFamily means the kernel has no generic-netlink "nbd" family:
// the nbd module is not loaded, or the kernel predates the family (4.12).
var ErrNoNetlinkFamily = errors.New("nbdattach: the kernel has no generic-netlink nbd family (is the nbd module loaded?)")

// netlinkClient speaks the kernel's generic-netlink nbd family.
type netlinkClient struct {
	conn   *genetlink.Conn
	family genetlink.Family
}

// dialNetlink opens a generic-netlink socket and resolves the nbd family.
func dialNetlink() (*netlinkClient, error) {
	conn, err := genetlink.Dial(nil)
	if err != nil {
		return nil, fmt.Errorf("nbdattach: open generic netlink: %w", err)
	}
	fam, err := conn.GetFamily(nbdFamilyName)
	if err != nil {
		conn.Close()
		if errors.Is(err, os.ErrNotExist) {
			return nil, ErrNoNetlinkFamily
		}
		return nil, fmt.Errorf("nbdattach: resolve the nbd netlink family: %w", err)
	}
	return &netlinkClient{conn: conn, family: fam}, nil
}

func (c *netlinkClient) Close() error { return c.conn.Close() }

// kernelConfig is what CONNECT and RECONFIGURE tell the kernel about a device.
type kernelConfig struct {
	index           int // -1: CONNECT lets the kernel choose
	size            uint64
	blockSize       uint64
	timeout         time.Duration
	deadConnTimeout time.Duration
	serverFlags     uint64
	backendID       string
}

// connect configures a device with the given sockets and returns its index.
// The kernel takes its own reference to each socket: the caller may close
// its copies of fds afterwards.
func (c *netlinkClient) connect(cfg kernelConfig, fds []int) (int, error) {
	msgs, err := c.execute(nbdCmdConnect, connectAttrs(cfg, fds), withReply)
	if err != nil {
		return -1, fmt.Errorf("nbdattach: netlink CONNECT: %w", err)
	}
	for _, m := range msgs {
		if idx, ok, err := decodeIndex(m.Data); err != nil {
			return -1, fmt.Errorf("nbdattach: CONNECT reply: %w", err)
		} else if ok {
			return idx, nil
		}
	}
	return -1, errors.New("nbdattach: netlink CONNECT: the reply names no device index")
}

// connectAttrs are CONNECT's attributes: the kernel requires the size and
// at least one socket.
func connectAttrs(cfg kernelConfig, fds []int) *netlink.AttributeEncoder {
	ae := netlink.NewAttributeEncoder()
	if cfg.index >= 0 {
		ae.Uint32(nbdAttrIndex, uint32(cfg.index))
	}
	ae.Uint64(nbdAttrSizeBytes, cfg.size)
	ae.Uint64(nbdAttrBlockSizeBytes, cfg.blockSize)
	encodeTimeouts(ae, cfg)
	ae.Uint64(nbdAttrServerFlags, cfg.serverFlags)
	// Client flags stay 0: no DESTROY_ON_DISCONNECT, so a detached device
	// stays in place for the next CONNECT instead of being removed behind
	// the back of whoever lists or reuses it (see docs/attach.md).
	ae.Uint64(nbdAttrClientFlags, 0)
	if cfg.backendID != "" {
		ae.String(nbdAttrBackendIdentifier, cfg.backendID)
	}
	encodeSockets(ae, fds)
	return ae
}

// decodeIndex finds NBD_ATTR_INDEX in a reply.
func decodeIndex(b []byte) (int, bool, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return -1, false, err
	}
	for ad.Next() {
		if ad.Type() == nbdAttrIndex {
			return int(ad.Uint32()), true, nil
		}
	}
	return -1, false, ad.Err()
}

// reconfigure hands new sockets to a configured device whose connections
// died, and with newSize > 0 sets its size. The kernel fills dead slots
// only and silently ignores sockets beyond them; it refuses the request
// when backendID does not match the one the device was connected with.
func (c *netlinkClient) reconfigure(cfg kernelConfig, fds []int, newSize uint64) error {
	if _, err := c.execute(nbdCmdReconfigure, reconfigureAttrs(cfg, fds, newSize), ackOnly); err != nil {
		return fmt.Errorf("nbdattach: netlink RECONFIGURE of nbd%d: %w", cfg.index, err)
	}
	return nil
}

// reconfigureAttrs name the device and its backend (the kernel refuses a
// RECONFIGURE without the identifier the device was connected with) and
// carry the new sockets. The size goes only when newSize > 0: the kernel
// applies any NBD_ATTR_SIZE_BYTES it gets (nbd_genl_size_set), so a relink
// that carried the size it was attached with would shrink a device grown
// since. The block size and flags never change.
func reconfigureAttrs(cfg kernelConfig, fds []int, newSize uint64) *netlink.AttributeEncoder {
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(nbdAttrIndex, uint32(cfg.index))
	encodeTimeouts(ae, cfg)
	if cfg.backendID != "" {
		ae.String(nbdAttrBackendIdentifier, cfg.backendID)
	}
	if newSize > 0 {
		ae.Uint64(nbdAttrSizeBytes, newSize)
	}
	if len(fds) > 0 {
		encodeSockets(ae, fds)
	}
	return ae
}

// disconnect asks the kernel to send NBD_CMD_DISC and drop the device's
// sockets; the servers of those sockets then see end of file.
func (c *netlinkClient) disconnect(index int) error {
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(nbdAttrIndex, uint32(index))
	if _, err := c.execute(nbdCmdDisconnect, ae, ackOnly); err != nil {
		return fmt.Errorf("nbdattach: netlink DISCONNECT of nbd%d: %w", index, err)
	}
	return nil
}

// DeviceStatus is one entry of the kernel's STATUS reply.
type DeviceStatus struct {
	Index     int
	Connected bool
}

// status lists every nbd device the kernel has (index < 0) or one device.
func (c *netlinkClient) status(index int) ([]DeviceStatus, error) {
	ae := netlink.NewAttributeEncoder()
	if index >= 0 {
		ae.Uint32(nbdAttrIndex, uint32(index))
	}
	msgs, err := c.execute(nbdCmdStatus, ae, withReply)
	if err != nil {
		return nil, fmt.Errorf("nbdattach: netlink STATUS: %w", err)
	}
	var out []DeviceStatus
	for _, m := range msgs {
		devs, err := decodeDeviceList(m.Data)
		if err != nil {
			return nil, fmt.Errorf("nbdattach: STATUS reply: %w", err)
		}
		out = append(out, devs...)
	}
	return out, nil
}

// replyKind says whether a command answers with a message of its own.
type replyKind bool

const (
	// withReply: CONNECT and STATUS answer with a message. No ACK is asked
	// for: the kernel would send it as a second message after the reply,
	// left unread on the socket, and the next request on the connection
	// would read it as a reply with the wrong sequence number. An error
	// still comes back as NLMSG_ERROR.
	withReply replyKind = true
	// ackOnly: RECONFIGURE and DISCONNECT answer with the ACK alone.
	ackOnly replyKind = false
)

func (c *netlinkClient) execute(cmd uint8, ae *netlink.AttributeEncoder, kind replyKind) ([]genetlink.Message, error) {
	data, err := ae.Encode()
	if err != nil {
		return nil, err
	}
	req := genetlink.Message{
		Header: genetlink.Header{Command: cmd, Version: nbdFamilyVersion},
		Data:   data,
	}
	flags := netlink.Request
	if kind == ackOnly {
		flags |= netlink.Acknowledge
	}
	return c.conn.Execute(req, c.family.ID, flags)
}

// encodeTimeouts adds the timeouts that are set; the kernel counts whole
// seconds, so a positive duration below one second is rounded up.
func encodeTimeouts(ae *netlink.AttributeEncoder, cfg kernelConfig) {
	if cfg.timeout > 0 {
		ae.Uint64(nbdAttrTimeout, ceilSeconds(cfg.timeout))
	}
	if cfg.deadConnTimeout > 0 {
		ae.Uint64(nbdAttrDeadConnTimeout, ceilSeconds(cfg.deadConnTimeout))
	}
}

func ceilSeconds(d time.Duration) uint64 {
	return uint64((d + time.Second - 1) / time.Second)
}

func encodeSockets(ae *netlink.AttributeEncoder, fds []int) {
	ae.Nested(nbdAttrSockets, func(nae *netlink.AttributeEncoder) error {
		for _, fd := range fds {
			nae.Nested(nbdSockItem, func(item *netlink.AttributeEncoder) error {
				item.Uint32(nbdSockFD, uint32(fd))
				return nil
			})
		}
		return nil
	})
}

// decodeDeviceList reads NBD_ATTR_DEVICE_LIST out of a STATUS reply.
func decodeDeviceList(b []byte) ([]DeviceStatus, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return nil, err
	}
	var out []DeviceStatus
	for ad.Next() {
		if ad.Type() != nbdAttrDeviceList {
			continue
		}
		ad.Nested(func(list *netlink.AttributeDecoder) error {
			for list.Next() {
				if list.Type() != nbdDeviceItem {
					continue
				}
				d := DeviceStatus{Index: -1}
				list.Nested(func(item *netlink.AttributeDecoder) error {
					for item.Next() {
						switch item.Type() {
						case nbdDeviceIndex:
							d.Index = int(item.Uint32())
						case nbdDeviceConnected:
							d.Connected = item.Uint8() != 0
						}
					}
					return nil
				})
				if d.Index >= 0 {
					out = append(out, d)
				}
			}
			return nil
		})
	}
	return out, ad.Err()
}

// Available reports whether this kernel's nbd driver can be attached
// through netlink: nil, or ErrNoNetlinkFamily when the nbd module is not
// loaded (or the kernel predates the family).
func Available() error {
	nl, err := dialNetlink()
	if err != nil {
		return err
	}
	return nl.Close()
}
