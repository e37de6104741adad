package nbdattach

// Wire constants of the NBD protocol (NetworkBlockDevice/nbd doc/proto.md).
// All integers travel big-endian.

const (
	magicNBD         = 0x4e42444d41474943 // "NBDMAGIC"
	magicOpt         = 0x49484156454F5054 // "IHAVEOPT"
	magicOptReply    = 0x0003e889045565a9
	magicRequest     = 0x25609513
	magicSimpleReply = 0x67446698
	magicStructReply = 0x668e33ef
)

// Handshake flags (server) and client flags.
const (
	flagFixedNewstyle   = 1 << 0
	flagNoZeroes        = 1 << 1
	clientFixedNewstyle = 1 << 0
	clientNoZeroes      = 1 << 1
)

// Options.
const (
	optExportName      = 1
	optAbort           = 2
	optList            = 3
	optStartTLS        = 5
	optInfo            = 6
	optGo              = 7
	optStructuredReply = 8
	optListMetaContext = 9
	optSetMetaContext  = 10
)

// Option reply types.
const (
	repAck         = 1
	repServer      = 2
	repInfo        = 3
	repMetaContext = 4

	repErrBit     = 1 << 31
	repErrUnsup   = repErrBit | 1
	repErrPolicy  = repErrBit | 2
	repErrInvalid = repErrBit | 3
	repErrUnknown = repErrBit | 6
)

// NBD_INFO types.
const (
	infoExport      = 0
	infoName        = 1
	infoDescription = 2
	infoBlockSize   = 3
)

// Transmission flags.
const (
	tflagHasFlags     = 1 << 0
	tflagReadOnly     = 1 << 1
	tflagSendFlush    = 1 << 2
	tflagSendFUA      = 1 << 3
	tflagRotational   = 1 << 4
	tflagSendTrim     = 1 << 5
	tflagWriteZeroes  = 1 << 6
	tflagSendDF       = 1 << 7
	tflagMultiConn    = 1 << 8
	tflagSendCache    = 1 << 10
	tflagSendFastZero = 1 << 11
)

// Commands.
const (
	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdCache       = 5
	cmdWriteZeroes = 6
	cmdBlockStatus = 7
)

// Command flags.
const (
	cflagFUA      = 1 << 0
	cflagNoHole   = 1 << 1
	cflagDF       = 1 << 2
	cflagReqOne   = 1 << 3
	cflagFastZero = 1 << 4
)

// Structured reply flags and types.
const (
	replyFlagDone = 1 << 0

	replyOffsetData  = 1
	replyOffsetHole  = 2
	replyBlockStatus = 5
	replyError       = 1<<15 | 1
)

// base:allocation status bits.
const (
	stateHole = 1 << 0
	stateZero = 1 << 1
)

// Errors sent to the client (Linux errno values, as the protocol says).
const (
	errPerm     = 1
	errIO       = 5
	errNoMem    = 12
	errInval    = 22
	errNoSpc    = 28
	errOverflow = 75
	errNotSup   = 95
)

// Sizes.
const (
	requestSize      = 28
	simpleReplySize  = 16
	structHeaderSize = 20

	// maxPayload caps READ and WRITE lengths, as qemu-nbd does; it is
	// also the advertised maximum block size.
	maxPayload = 32 << 20
	// preferredBlock is the advertised preferred block size.
	preferredBlock = 4096
	// maxOptionData bounds one option's data during the handshake; no
	// option we understand needs more (names are at most 4096 bytes).
	maxOptionData = 64 << 10
	// maxStringLen is the protocol's limit on names and queries.
	maxStringLen = 4096

	// metaBaseAllocation is the one meta context we offer, and its id.
	metaBaseAllocation   = "base:allocation"
	metaBaseAllocationID = 1
)
