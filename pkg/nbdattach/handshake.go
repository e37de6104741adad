package nbdattach

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// maxOptions bounds the options one handshake may send; a client that
// keeps haggling past it is treated as hostile.
const maxOptions = 1024

// errAborted ends a handshake the client aborted (NBD_OPT_ABORT): a clean
// end, not an error.
var errAborted = errors.New("nbd: client aborted the handshake")

// handshake runs the fixed newstyle negotiation and returns the export the
// client chose (nil after a clean abort). Violations of the protocol end
// the connection with an error; bad option contents get error replies.
func (c *connState) handshake() (*export, error) {
	c.nc.SetDeadline(time.Now().Add(c.srv.opts.HandshakeTimeout))
	var hello [18]byte
	binary.BigEndian.PutUint64(hello[0:], magicNBD)
	binary.BigEndian.PutUint64(hello[8:], magicOpt)
	binary.BigEndian.PutUint16(hello[16:], flagFixedNewstyle|flagNoZeroes)
	if _, err := c.nc.Write(hello[:]); err != nil {
		return nil, fmt.Errorf("nbd handshake: %w", err)
	}
	var cflags [4]byte
	if _, err := io.ReadFull(c.br, cflags[:]); err != nil {
		return nil, fmt.Errorf("nbd handshake: client flags: %w", err)
	}
	flags := binary.BigEndian.Uint32(cflags[:])
	if flags&^(clientFixedNewstyle|clientNoZeroes) != 0 {
		return nil, fmt.Errorf("nbd handshake: unknown client flags %#x", flags)
	}
	c.noZeroes = flags&clientNoZeroes != 0
	for n := 0; n < maxOptions; n++ {
		exp, err := c.option()
		if errors.Is(err, errAborted) {
			return nil, nil
		}
		if err != nil || exp != nil {
			if err == nil {
				c.nc.SetDeadline(time.Time{})
			}
			return exp, err
		}
	}
	return nil, fmt.Errorf("nbd handshake: more than %d options", maxOptions)
}

// option reads and answers one option; it returns the export when the
// option ends the handshake.
func (c *connState) option() (*export, error) {
	var h [16]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		return nil, fmt.Errorf("nbd handshake: option header: %w", err)
	}
	if binary.BigEndian.Uint64(h[0:]) != magicOpt {
		return nil, errors.New("nbd handshake: bad option magic")
	}
	opt := binary.BigEndian.Uint32(h[8:])
	n := binary.BigEndian.Uint32(h[12:])
	if n > maxOptionData {
		return nil, fmt.Errorf("nbd handshake: option %d carries %d bytes (limit %d)", opt, n, maxOptionData)
	}
	data := make([]byte, n)
	if _, err := io.ReadFull(c.br, data); err != nil {
		return nil, fmt.Errorf("nbd handshake: option data: %w", err)
	}
	switch opt {
	case optExportName:
		return c.optExportName(data)
	case optAbort:
		c.optReply(opt, repAck, nil) // the client may already be gone
		return nil, errAborted
	case optList:
		return nil, c.optList(data)
	case optInfo, optGo:
		return c.optInfoGo(opt, data)
	case optStructuredReply:
		if len(data) != 0 {
			return nil, c.optError(opt, repErrInvalid, "STRUCTURED_REPLY takes no data")
		}
		c.structured = true
		return nil, c.optReply(opt, repAck, nil)
	case optListMetaContext, optSetMetaContext:
		return nil, c.optMetaContext(opt, data)
	case optStartTLS:
		return nil, c.optError(opt, repErrPolicy, "TLS is not offered on this socket")
	}
	return nil, c.optError(opt, repErrUnsup, "unknown option")
}

func (c *connState) optExportName(data []byte) (*export, error) {
	exp, err := c.srv.join(c, string(data))
	if err != nil {
		// NBD_OPT_EXPORT_NAME has no error reply: the spec says to hang up.
		return nil, fmt.Errorf("nbd handshake: %w", err)
	}
	c.metaAlloc = c.metaAlloc && c.metaExport == exp.Name
	b := make([]byte, 10, 134)
	binary.BigEndian.PutUint64(b[0:], uint64(exp.size.Load()))
	binary.BigEndian.PutUint16(b[8:], transmissionFlags(exp.caps, c.structured))
	if !c.noZeroes {
		b = b[:134]
	}
	if _, err := c.nc.Write(b); err != nil {
		return nil, fmt.Errorf("nbd handshake: %w", err)
	}
	return exp, nil
}

func (c *connState) optList(data []byte) error {
	if len(data) != 0 {
		return c.optError(optList, repErrInvalid, "LIST takes no data")
	}
	for _, e := range c.srv.exportList() {
		b := binary.BigEndian.AppendUint32(nil, uint32(len(e.Name)))
		if err := c.optReply(optList, repServer, append(b, e.Name...)); err != nil {
			return err
		}
	}
	return c.optReply(optList, repAck, nil)
}

// optInfoGo answers NBD_OPT_INFO and NBD_OPT_GO: the export's size and
// flags, its name and description when asked, and the block sizes. A GO
// joins the export's connections first, so that one over the limit is
// refused before anything is promised.
func (c *connState) optInfoGo(opt uint32, data []byte) (*export, error) {
	p := parser{b: data}
	name := p.str32()
	nreq := p.u16()
	reqs := make([]uint16, 0, min(int(nreq), len(data)/2))
	for range nreq {
		reqs = append(reqs, p.u16())
	}
	if !p.done() {
		return nil, c.optError(opt, repErrInvalid, "malformed INFO/GO request")
	}
	exp, err := c.chooseExport(opt, name)
	if exp == nil {
		return nil, err
	}
	info := binary.BigEndian.AppendUint16(nil, infoExport)
	info = binary.BigEndian.AppendUint64(info, uint64(exp.size.Load()))
	info = binary.BigEndian.AppendUint16(info, transmissionFlags(exp.caps, c.structured))
	if err := c.optReply(opt, repInfo, info); err != nil {
		return nil, err
	}
	if slices.Contains(reqs, infoName) {
		info = binary.BigEndian.AppendUint16(nil, infoName)
		if err := c.optReply(opt, repInfo, append(info, exp.Name...)); err != nil {
			return nil, err
		}
	}
	if slices.Contains(reqs, infoDescription) && exp.Description != "" {
		info = binary.BigEndian.AppendUint16(nil, infoDescription)
		if err := c.optReply(opt, repInfo, append(info, exp.Description...)); err != nil {
			return nil, err
		}
	}
	info = binary.BigEndian.AppendUint16(nil, infoBlockSize)
	info = binary.BigEndian.AppendUint32(info, 1)
	info = binary.BigEndian.AppendUint32(info, preferredBlock)
	info = binary.BigEndian.AppendUint32(info, maxPayload)
	if err := c.optReply(opt, repInfo, info); err != nil {
		return nil, err
	}
	if err := c.optReply(opt, repAck, nil); err != nil {
		return nil, err
	}
	if opt == optInfo {
		return nil, nil
	}
	// Meta contexts chosen for another export do not carry over.
	c.metaAlloc = c.metaAlloc && c.metaExport == exp.Name
	return exp, nil
}

// chooseExport finds the export an INFO asks about, or joins the one a GO
// picks; on failure it sends the error reply and returns a nil export
// (with the error of sending it).
func (c *connState) chooseExport(opt uint32, name string) (*export, error) {
	if opt == optInfo {
		if exp := c.srv.lookup(name); exp != nil {
			return exp, nil
		}
		return nil, c.optError(opt, repErrUnknown, "no such export")
	}
	exp, err := c.srv.join(c, name)
	switch {
	case errors.Is(err, errExportFull):
		c.srv.logf("nbd: %v: GO refused", err)
		return nil, c.optError(opt, repErrPolicy, err.Error())
	case err != nil:
		return nil, c.optError(opt, repErrUnknown, "no such export")
	}
	return exp, nil
}

// optMetaContext answers NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT. The only context is base:allocation, offered
// when the backend reports block status.
func (c *connState) optMetaContext(opt uint32, data []byte) error {
	if opt == optSetMetaContext && !c.structured {
		return c.optError(opt, repErrInvalid, "SET_META_CONTEXT needs structured replies")
	}
	p := parser{b: data}
	name := p.str32()
	nq := p.u32()
	queries := make([]string, 0, min(int(nq), len(data)/4))
	for i := uint32(0); i < nq && p.err == nil; i++ {
		queries = append(queries, p.str32())
	}
	if !p.done() {
		return c.optError(opt, repErrInvalid, "malformed meta context request")
	}
	exp := c.srv.lookup(name)
	if exp == nil {
		return c.optError(opt, repErrUnknown, "no such export")
	}
	offered := exp.caps.BlockStatus
	match := false
	if opt == optListMetaContext && len(queries) == 0 {
		match = offered
	}
	for _, q := range queries {
		if !offered {
			break
		}
		if q == metaBaseAllocation || (opt == optListMetaContext && q == "base:") {
			match = true
		}
	}
	if opt == optSetMetaContext {
		c.metaAlloc, c.metaExport = match, name
	}
	if match {
		r := binary.BigEndian.AppendUint32(nil, metaBaseAllocationID)
		if err := c.optReply(opt, repMetaContext, append(r, metaBaseAllocation...)); err != nil {
			return err
		}
	}
	return c.optReply(opt, repAck, nil)
}

// optReply sends one option reply.
func (c *connState) optReply(opt, typ uint32, data []byte) error {
	b := make([]byte, 20, 20+len(data))
	binary.BigEndian.PutUint64(b[0:], magicOptReply)
	binary.BigEndian.PutUint32(b[8:], opt)
	binary.BigEndian.PutUint32(b[12:], typ)
	binary.BigEndian.PutUint32(b[16:], uint32(len(data)))
	if _, err := c.nc.Write(append(b, data...)); err != nil {
		return fmt.Errorf("nbd handshake: %w", err)
	}
	return nil
}

// optError sends an error reply with a message for humans.
func (c *connState) optError(opt, typ uint32, msg string) error {
	return c.optReply(opt, typ, []byte(msg))
}

// parser reads big-endian fields from an option's data; the first short
// read sets err and every later field reads as zero.
type parser struct {
	b   []byte
	err error
}

var errShort = errors.New("short option data")

func (p *parser) take(n int) []byte {
	if p.err != nil || n > len(p.b) {
		p.err = errShort
		return nil
	}
	v := p.b[:n]
	p.b = p.b[n:]
	return v
}

func (p *parser) u16() uint16 {
	if b := p.take(2); b != nil {
		return binary.BigEndian.Uint16(b)
	}
	return 0
}

func (p *parser) u32() uint32 {
	if b := p.take(4); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}

// str32 reads a string prefixed by its 32-bit length, at most 4096 bytes.
func (p *parser) str32() string {
	n := p.u32()
	if n > maxStringLen {
		p.err = errShort
		return ""
	}
	return string(p.take(int(n)))
}

// done reports whether every byte was consumed without error.
func (p *parser) done() bool { return p.err == nil && len(p.b) == 0 }

func sortExports(es []*export) {
	slices.SortFunc(es, func(a, b *export) int { return strings.Compare(a.Name, b.Name) })
}
