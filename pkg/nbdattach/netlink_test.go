package nbdattach

import (
	"testing"
	"time"

	"github.com/mdlayher/netlink"
)

// decodedAttrs flattens an encoder's output: top-level numbers, strings,
// and the socket fds nested in NBD_ATTR_SOCKETS.
type decodedAttrs struct {
	u64     map[uint16]uint64
	u32     map[uint16]uint32
	str     map[uint16]string
	sockets []uint32
}

func decodeAttrs(t *testing.T, ae *netlink.AttributeEncoder) decodedAttrs {
	t.Helper()
	b, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		t.Fatal(err)
	}
	d := decodedAttrs{u64: map[uint16]uint64{}, u32: map[uint16]uint32{}, str: map[uint16]string{}}
	for ad.Next() {
		switch ad.Type() {
		case nbdAttrIndex:
			d.u32[ad.Type()] = ad.Uint32()
		case nbdAttrBackendIdentifier:
			d.str[ad.Type()] = ad.String()
		case nbdAttrSockets:
			ad.Nested(func(nad *netlink.AttributeDecoder) error {
				for nad.Next() {
					if nad.Type() != nbdSockItem {
						t.Errorf("socket list holds attribute %d, want NBD_SOCK_ITEM", nad.Type())
					}
					nad.Nested(func(item *netlink.AttributeDecoder) error {
						for item.Next() {
							if item.Type() == nbdSockFD {
								d.sockets = append(d.sockets, item.Uint32())
							}
						}
						return nil
					})
				}
				return nil
			})
		default:
			d.u64[ad.Type()] = ad.Uint64()
		}
	}
	if err := ad.Err(); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestConnectAttrs(t *testing.T) {
	cfg := kernelConfig{index: -1, size: 1 << 30, blockSize: 4096, timeout: 2500 * time.Millisecond,
		deadConnTimeout: 2 * time.Minute, serverFlags: tflagHasFlags | tflagSendFlush, backendID: "vol-1"}
	d := decodeAttrs(t, connectAttrs(cfg, []int{7, 9}))
	if _, ok := d.u32[nbdAttrIndex]; ok {
		t.Error("index -1 must leave the choice to the kernel (no NBD_ATTR_INDEX)")
	}
	want := map[uint16]uint64{nbdAttrSizeBytes: 1 << 30, nbdAttrBlockSizeBytes: 4096, nbdAttrTimeout: 3,
		nbdAttrDeadConnTimeout: 120, nbdAttrServerFlags: tflagHasFlags | tflagSendFlush, nbdAttrClientFlags: 0}
	for k, v := range want {
		if got, ok := d.u64[k]; !ok || got != v {
			t.Errorf("attribute %d = %d (present %v), want %d", k, got, ok, v)
		}
	}
	if d.str[nbdAttrBackendIdentifier] != "vol-1" {
		t.Errorf("backend identifier %q", d.str[nbdAttrBackendIdentifier])
	}
	if len(d.sockets) != 2 || d.sockets[0] != 7 || d.sockets[1] != 9 {
		t.Errorf("sockets %v, want [7 9]", d.sockets)
	}

	cfg.index = 3
	if d := decodeAttrs(t, connectAttrs(cfg, []int{7})); d.u32[nbdAttrIndex] != 3 {
		t.Errorf("index %d, want 3", d.u32[nbdAttrIndex])
	}
}

func TestReconfigureAttrs(t *testing.T) {
	cfg := kernelConfig{index: 5, size: 1 << 30, blockSize: 512, timeout: 30 * time.Second,
		deadConnTimeout: time.Minute, serverFlags: tflagHasFlags, backendID: "vol-2"}
	d := decodeAttrs(t, reconfigureAttrs(cfg, []int{11}, 0))
	if d.u32[nbdAttrIndex] != 5 || d.str[nbdAttrBackendIdentifier] != "vol-2" {
		t.Errorf("index %d backend %q", d.u32[nbdAttrIndex], d.str[nbdAttrBackendIdentifier])
	}
	// The kernel ignores size and flags on RECONFIGURE only if they are
	// absent: a relink that sent the size it was attached with would
	// shrink a device grown since.
	for _, k := range []uint16{nbdAttrSizeBytes, nbdAttrBlockSizeBytes, nbdAttrServerFlags} {
		if _, ok := d.u64[k]; ok {
			t.Errorf("RECONFIGURE carries attribute %d", k)
		}
	}
	if len(d.sockets) != 1 || d.sockets[0] != 11 {
		t.Errorf("sockets %v", d.sockets)
	}

	// A resize carries the new size and no sockets; a re-adoption that
	// grows the device carries both.
	d = decodeAttrs(t, reconfigureAttrs(kernelConfig{index: 5, backendID: "vol-2"}, nil, 3<<30))
	if d.u64[nbdAttrSizeBytes] != 3<<30 || d.str[nbdAttrBackendIdentifier] != "vol-2" || d.sockets != nil {
		t.Errorf("resize: %+v", d)
	}
	for _, k := range []uint16{nbdAttrBlockSizeBytes, nbdAttrServerFlags, nbdAttrTimeout} {
		if _, ok := d.u64[k]; ok {
			t.Errorf("resize carries attribute %d", k)
		}
	}
	d = decodeAttrs(t, reconfigureAttrs(cfg, []int{11, 12}, 2<<30))
	if d.u64[nbdAttrSizeBytes] != 2<<30 || len(d.sockets) != 2 {
		t.Errorf("re-adoption with growth: %+v", d)
	}
}

func TestDecodeStatusReply(t *testing.T) {
	ae := netlink.NewAttributeEncoder()
	ae.Nested(nbdAttrDeviceList, func(l *netlink.AttributeEncoder) error {
		for i, conn := range []uint8{0, 1, 0} {
			l.Nested(nbdDeviceItem, func(item *netlink.AttributeEncoder) error {
				item.Uint32(nbdDeviceIndex, uint32(i))
				item.Uint8(nbdDeviceConnected, conn)
				return nil
			})
		}
		return nil
	})
	b, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	devs, err := decodeDeviceList(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != 3 || devs[1] != (DeviceStatus{Index: 1, Connected: true}) || devs[2].Connected {
		t.Fatalf("decoded %+v", devs)
	}
	if _, err := decodeDeviceList([]byte{1, 2, 3}); err == nil {
		t.Error("a truncated reply decoded without error")
	}
}

func TestDecodeIndex(t *testing.T) {
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(nbdAttrIndex, 12)
	b, _ := ae.Encode()
	if idx, ok, err := decodeIndex(b); err != nil || !ok || idx != 12 {
		t.Fatalf("decodeIndex = %d %v %v", idx, ok, err)
	}
	if _, ok, err := decodeIndex(nil); ok || err != nil {
		t.Fatalf("empty reply: ok %v err %v", ok, err)
	}
}
