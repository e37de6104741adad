package qcow2

import "encoding/binary"

func putU64s(dst []byte, v []uint64) {
	for i, x := range v {
		binary.BigEndian.PutUint64(dst[i*8:], x)
	}
}

func putU32(dst []byte, v uint32) { binary.BigEndian.PutUint32(dst, v) }

func isZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}
