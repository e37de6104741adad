package qcow2

import "encoding/binary"

// Refcount entries are 1<<order bits wide (order 0..6, i.e. 1..64 bits) and
// stored big-endian in a refcount block. For widths below 8 bits several
// entries share a byte; following QEMU, entry i of a sub-byte width lives in
// byte i*width/8 at bit position (i*width)%8 counted from the least
// significant bit.
//
// Callers must ensure that idx addresses an entry inside block (that is,
// idx < len(block)*8>>order) and that order <= maxRefcountOrder; v is
// truncated to the entry width by setRefcount (callers check for overflow
// with refcountMax first).

// refcountMax is the largest value an entry of the given order can hold.
func refcountMax(order uint32) uint64 {
	bits := uint64(1) << order
	if bits >= 64 {
		return ^uint64(0)
	}
	return uint64(1)<<bits - 1
}

// refcountEntriesPerBlock is the number of entries in a refcount block of
// clusterSize bytes.
func refcountEntriesPerBlock(clusterSize uint64, order uint32) uint64 {
	return clusterSize * 8 >> order
}

// getRefcount returns entry idx of a refcount block.
func getRefcount(block []byte, idx uint64, order uint32) uint64 {
	switch order {
	case 0, 1, 2:
		width := uint64(1) << order
		bit := idx * width
		return uint64(block[bit/8]>>(bit%8)) & (uint64(1)<<width - 1)
	case 3:
		return uint64(block[idx])
	case 4:
		return uint64(binary.BigEndian.Uint16(block[idx*2:]))
	case 5:
		return uint64(binary.BigEndian.Uint32(block[idx*4:]))
	case 6:
		return binary.BigEndian.Uint64(block[idx*8:])
	}
	panic("qcow2: invalid refcount order")
}

// setRefcount stores v (truncated to the entry width) into entry idx of a
// refcount block.
func setRefcount(block []byte, idx uint64, order uint32, v uint64) {
	switch order {
	case 0, 1, 2:
		width := uint64(1) << order
		bit := idx * width
		mask := byte(uint64(1)<<width-1) << (bit % 8)
		b := &block[bit/8]
		*b = *b&^mask | byte(v<<(bit%8))&mask
	case 3:
		block[idx] = byte(v)
	case 4:
		binary.BigEndian.PutUint16(block[idx*2:], uint16(v))
	case 5:
		binary.BigEndian.PutUint32(block[idx*4:], uint32(v))
	case 6:
		binary.BigEndian.PutUint64(block[idx*8:], v)
	default:
		panic("qcow2: invalid refcount order")
	}
}
