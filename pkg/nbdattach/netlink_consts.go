package nbdattach

// Numbers of the kernel's generic-netlink "nbd" family (uapi
// linux/nbd-netlink.h). They are kernel ABI: they never change, so they are
// spelled out here rather than generated. NBD_ATTR_SERVER_FLAGS takes the
// protocol's transmission flags (protocol.go).

const (
	nbdFamilyName    = "nbd"
	nbdFamilyVersion = 1
)

// Commands.
const (
	nbdCmdConnect     = 1
	nbdCmdDisconnect  = 2
	nbdCmdReconfigure = 3
	nbdCmdLinkDead    = 4 // multicast only
	nbdCmdStatus      = 5
)

// Top-level attributes.
const (
	nbdAttrIndex             = 1  // u32
	nbdAttrSizeBytes         = 2  // u64
	nbdAttrBlockSizeBytes    = 3  // u64
	nbdAttrTimeout           = 4  // u64, seconds
	nbdAttrServerFlags       = 5  // u64
	nbdAttrClientFlags       = 6  // u64
	nbdAttrSockets           = 7  // nested NBD_SOCK_ITEMs
	nbdAttrDeadConnTimeout   = 8  // u64, seconds
	nbdAttrDeviceList        = 9  // nested NBD_DEVICE_ITEMs (STATUS reply)
	nbdAttrBackendIdentifier = 10 // string
)

// Nested attributes of NBD_ATTR_SOCKETS and NBD_ATTR_DEVICE_LIST.
const (
	nbdSockItem = 1
	nbdSockFD   = 1 // u32

	nbdDeviceItem      = 1
	nbdDeviceIndex     = 1 // u32
	nbdDeviceConnected = 2 // u8
)
