package qcow2

import (
	"encoding/binary"
	"math/bits"
	"sync/atomic"
)

// liveBitmap is a persistent bitmap held in memory while the image is open
// for writing: bit i covers guest bytes [i<<granBits, (i+1)<<granBits).
// Bits are set with atomic operations because guest writes mark them under
// the image's shared lock; everything else (loading, resizing, storing)
// holds the lock exclusively.
type liveBitmap struct {
	name     string
	granBits uint8
	enabled  bool // marked by guest writes ('auto')
	nbits    int64
	words    []uint64
	// changed: a mark set a bit since the bitmap was loaded, so the copy
	// on disk is stale. fresh: the bitmap has no valid copy on disk
	// (added, cleared, resized).
	changed atomic.Bool
	fresh   bool
}

// liveSet is what guest writes mark: the enabled in-memory bitmaps. It is
// replaced, never changed, so that the write path reads it without a lock.
type liveSet struct {
	maps []*liveBitmap
}

func newLiveBitmap(name string, granBits uint8, enabled bool, size int64) *liveBitmap {
	b := &liveBitmap{name: name, granBits: granBits, enabled: enabled}
	b.resize(size)
	return b
}

// resize changes the number of bits for a virtual size of size bytes.
// Bits past the old end start clear; the caller marks what it must.
func (b *liveBitmap) resize(size int64) {
	n := (size + int64(1)<<b.granBits - 1) >> b.granBits
	words := make([]uint64, (n+63)/64)
	copy(words, b.words)
	if n%64 != 0 && n < b.nbits {
		words[len(words)-1] &= uint64(1)<<(n%64) - 1
	}
	b.nbits, b.words = n, words
}

// mark sets the bits covering guest bytes [off, off+n).
func (b *liveBitmap) mark(off, n int64) {
	if n <= 0 || off < 0 {
		return
	}
	first, last := off>>b.granBits, (off+n-1)>>b.granBits
	last = min(last, b.nbits-1)
	for i := first; i <= last; {
		w := i / 64
		hi := min(last, w*64+63)
		mask := (^uint64(0) >> (63 - (hi - w*64))) &^ (uint64(1)<<(i%64) - 1)
		if atomic.LoadUint64(&b.words[w])&mask != mask {
			atomic.OrUint64(&b.words[w], mask)
			if !b.changed.Load() {
				b.changed.Store(true)
			}
		}
		i = hi + 1
	}
}

// count returns the number of set bits.
func (b *liveBitmap) count() int64 {
	var n int
	for i := range b.words {
		n += bits.OnesCount64(atomic.LoadUint64(&b.words[i]))
	}
	return int64(n)
}

// bytesPerCluster is how many bytes of bitmap data one cluster holds.
func dataWordsPerCluster(cs int64) int64 { return cs / 8 }

// clusterData serialises data cluster k (cs bytes, little-endian words:
// byte j bit i is bit j*8+i, as the specification's bit_offset says); it
// returns nil when the cluster would be all zeros.
func (b *liveBitmap) clusterData(k, cs int64) []byte {
	per := dataWordsPerCluster(cs)
	lo := k * per
	hi := min(lo+per, int64(len(b.words)))
	var buf []byte
	for w := lo; w < hi; w++ {
		v := atomic.LoadUint64(&b.words[w])
		if v == 0 {
			continue
		}
		if buf == nil {
			buf = make([]byte, cs)
		}
		binary.LittleEndian.PutUint64(buf[(w-lo)*8:], v)
	}
	return buf
}

// loadCluster fills data cluster k from buf (cs bytes). Tail bits past the
// bitmap's end are ignored (the specification requires them to be zero).
func (b *liveBitmap) loadCluster(k int64, buf []byte) {
	per := dataWordsPerCluster(int64(len(buf)))
	lo := k * per
	for w := lo; w < min(lo+per, int64(len(b.words))); w++ {
		b.words[w] = binary.LittleEndian.Uint64(buf[(w-lo)*8:])
	}
	if r := b.nbits % 64; r != 0 {
		b.words[len(b.words)-1] &= uint64(1)<<r - 1
	}
}

// fillCluster sets every bit of data cluster k (a table entry with the
// "all ones" flag).
func (b *liveBitmap) fillCluster(k, cs int64) {
	per := dataWordsPerCluster(cs)
	for w := k * per; w < min((k+1)*per, int64(len(b.words))); w++ {
		b.words[w] = ^uint64(0)
	}
	if r := b.nbits % 64; r != 0 {
		b.words[len(b.words)-1] &= uint64(1)<<r - 1
	}
}

// markBitmaps records a guest change of [off, off+n) in every enabled
// bitmap. It is on the path of every guest write: with no enabled bitmap
// it is one atomic load. Callers hold the image lock (shared or
// exclusive), which orders marks before a resize replaces the bit arrays.
func (img *Image) markBitmaps(off, n int64) {
	s := img.bm.live.Load()
	if s == nil {
		return
	}
	for _, b := range s.maps {
		b.mark(off, n)
	}
}

// publishLive makes the enabled bitmaps among mem the set guest writes
// mark. The caller holds mu exclusively.
func (img *Image) publishLive() {
	var s liveSet
	for _, b := range img.bm.mem {
		if b.enabled {
			s.maps = append(s.maps, b)
		}
	}
	if len(s.maps) == 0 {
		img.bm.live.Store(nil)
		return
	}
	img.bm.live.Store(&s)
}
