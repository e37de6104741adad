package qcow2

import (
	"encoding/binary"
	"fmt"
	"math/bits"
)

// Extended L2 entries (incompatible feature bit 4): every L2 entry is 16
// bytes, the usual 64-bit word followed by a bitmap that splits a standard
// cluster into 32 subclusters. Bits 0-31 mark subclusters stored in the
// host cluster, bits 32-63 subclusters that read as zeros; a subcluster
// with neither bit reads from the backing file. The zero flag of the L2
// word is unused, compressed clusters keep a zero bitmap and have no
// subclusters, and COPIED and refcounts mean what they always mean: they
// belong to the host cluster, whatever its subclusters say.

const (
	subclusters   = 32
	bitmapAllZero = l2BitmapAllAlloc << 32
)

// minExtendedClusterBits: subclusters are at least 512 bytes, so
// extended L2 entries need 16 KiB clusters (QEMU refuses smaller ones).
const minExtendedClusterBits = 14

// checkExtendedL2 refuses extended L2 geometry this engine (and QEMU)
// cannot use.
func checkExtendedL2(h *Header) error {
	if h.IncompatibleFeatures&incompatExtendedL2 == 0 {
		return nil
	}
	if h.Version < 3 {
		return fmt.Errorf("%w: extended L2 entries in a version %d image", ErrInvalid, h.Version)
	}
	if h.ClusterBits < minExtendedClusterBits {
		return fmt.Errorf("%w: extended L2 entries need a cluster size of at least %d bytes (the image has %d)",
			ErrInvalid, 1<<minExtendedClusterBits, 1<<h.ClusterBits)
	}
	return nil
}

// l2EntrySize is the size in bytes of one L2 entry.
func l2EntrySize(extended bool) int64 {
	if extended {
		return 16
	}
	return 8
}

// entryAt returns L2 entry k of a table or slice buffer: the L2 word and,
// on extended images, the subcluster bitmap.
func (img *Image) entryAt(buf []byte, k int64) (e, bitmap uint64) {
	return l2EntryAt(buf, k, img.ext)
}

// l2EntryAt is entryAt for a given entry format (the checker has no Image).
func l2EntryAt(buf []byte, k int64, extended bool) (e, bitmap uint64) {
	p := buf[k*l2EntrySize(extended):]
	e = binary.BigEndian.Uint64(p)
	if extended {
		bitmap = binary.BigEndian.Uint64(p[8:])
	}
	return e, bitmap
}

// putEntry stores L2 entry k into a table or slice buffer.
func (img *Image) putEntry(buf []byte, k int64, e, bitmap uint64) {
	p := buf[k*img.l2es:]
	binary.BigEndian.PutUint64(p, e)
	if img.ext {
		binary.BigEndian.PutUint64(p[8:], bitmap)
	}
}

// decodeExt classifies an extended, uncompressed entry whose host offset
// has been validated: a cluster whose subclusters all share one state gets
// that kind, any other is kindSub. Bitmaps the spec forbids (a subcluster
// both allocated and zero, allocated subclusters without a host cluster)
// are corruption, as QEMU treats them.
func (img *Image) decodeExt(vi int64, m mapping) (mapping, error) {
	alloc, zero := m.bitmap&l2BitmapAllAlloc, m.bitmap>>32
	switch {
	case alloc&zero != 0:
		return m, img.corruptionOrInvalid("cluster %d has subclusters both allocated and zero (bitmap %#x)", vi, m.bitmap)
	case m.host == 0 && alloc != 0:
		return m, img.corruptionOrInvalid("unallocated cluster %d has allocated subclusters (bitmap %#x)", vi, m.bitmap)
	case m.host != 0 && alloc == l2BitmapAllAlloc:
		m.kind = kindData
	case zero == l2BitmapAllAlloc:
		m.kind = kindZero
	case m.host == 0 && zero == 0:
		m.kind = kindUnallocated
	default:
		m.kind = kindSub
	}
	return m, nil
}

// subKind is what subcluster s of a cluster mapping reads as.
func subKind(m mapping, s int64) clusterKind {
	if m.kind != kindSub {
		return m.kind
	}
	switch {
	case m.bitmap&(1<<s) != 0:
		return kindData
	case m.bitmap&(1<<(s+32)) != 0:
		return kindZero
	}
	return kindUnallocated
}

// subMapping is the mapping of the guest bytes from offset in of a
// cluster on: the cluster's own for uniform kinds, the state of the
// subcluster holding in otherwise. host points at in itself.
func (img *Image) subMapping(m mapping, in int64) mapping {
	k := subKind(m, in/img.scs)
	sm := mapping{kind: k, copied: m.copied, raw: m.raw, bitmap: m.bitmap}
	if m.host != 0 && k != kindUnallocated && k != kindCompressed {
		sm.host = m.host + in
	}
	return sm
}

// clusterRuns calls fn for the stretches of [in, in+l) inside one cluster
// that read uniformly: one for a uniform cluster, one per run of
// subclusters in the same state otherwise. Offsets are within the cluster.
func (img *Image) clusterRuns(m mapping, in, l int64, fn func(in, l int64, sm mapping) error) error {
	if m.kind != kindSub {
		return fn(in, l, img.subMapping(m, in))
	}
	for pos, end := in, in+l; pos < end; {
		k := subKind(m, pos/img.scs)
		next := (pos/img.scs + 1) * img.scs
		for next < end && subKind(m, next/img.scs) == k {
			next += img.scs
		}
		n := min(next, end) - pos
		if err := fn(pos, n, img.subMapping(m, pos)); err != nil {
			return err
		}
		pos += n
	}
	return nil
}

// readCluster reads guest bytes [pos, pos+len(dst)) that lie inside one
// cluster whose mapping is m.
func (img *Image) readCluster(dst []byte, pos int64, m mapping) error {
	start := pos - pos%img.cs
	return img.clusterRuns(m, pos-start, int64(len(dst)), func(in, l int64, sm mapping) error {
		return img.readRun(dst[start+in-pos:start+in-pos+l], run{off: start + in, n: l, m: sm})
	})
}

// subBits is the bitmap of the subclusters that [in, in+l) of a cluster
// touches (l > 0).
func (img *Image) subBits(in, l int64) uint64 {
	s0, s1 := in/img.scs, (in+l-1)/img.scs
	return (uint64(1)<<(s1+1) - 1) &^ (uint64(1)<<s0 - 1)
}

// zeroEntry is the L2 entry (word and bitmap) of a cluster that reads as
// zeros without a host cluster.
func (img *Image) zeroEntry() (uint64, uint64) {
	if img.ext {
		return 0, bitmapAllZero
	}
	return oflagZero, 0
}

// allocBitmap is the bitmap of a cluster whose subclusters are all stored.
func (img *Image) allocBitmap() uint64 {
	if img.ext {
		return l2BitmapAllAlloc
	}
	return 0
}

// bitRuns calls fn for each run of consecutive set bits in the low 32
// bits of b, as subcluster index ranges [s, e).
func bitRuns(b uint64, fn func(s, e int64) error) error {
	b &= l2BitmapAllAlloc
	for b != 0 {
		s := int64(bits.TrailingZeros64(b))
		e := s + int64(bits.TrailingZeros64(^(b >> s)))
		if err := fn(s, e); err != nil {
			return err
		}
		b &^= (uint64(1)<<e - 1)
	}
	return nil
}
