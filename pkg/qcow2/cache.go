package qcow2

import (
	"math/bits"
	"sync"
	"sync/atomic"
)

// tableCache caches fixed-size pieces of metadata tables (L2 slices,
// refcount blocks) keyed by host offset. It is write-through: callers write
// the file first and then update the cached bytes, so nothing lives only in
// memory (DESIGN.md rule 1) and eviction never writes.
//
// A hit takes no lock (cached): the caller passes a hint (for L2 slices,
// the guest slice number) that picks a slot of front, a direct-mapped
// array of atomic pointers to resident entries, and the entry is used if
// it is for the wanted offset and still resident. A front miss (get) falls
// back to the index under mu (read-locked for hits, write-locked for
// loads) and installs the entry in front. Eviction is CLOCK (second
// chance) over slots.
//
// Entries are immutable once published except for their bytes and
// reference bit: a loaded or replaced table gets a new entry, and an entry
// leaving the cache is marked dead and its buffer never used by the cache
// again. Cached bytes are shared: readers use them under the image's read
// lock, and they are modified only under the image's write lock, so a
// reader holding an entry that is evicted meanwhile still reads current
// bytes for the rest of its request.
type tableCache struct {
	front []atomic.Pointer[cacheEntry] // len is a power of two
	mask  uint64                       // len(front) - 1

	mu    sync.RWMutex
	index map[int64]int // host offset -> slot
	slots []*cacheEntry
	hand  int
	limit int
	size  int // bytes per entry
}

// cacheEntry is one cached table piece.
type cacheEntry struct {
	off  int64
	buf  []byte
	ref  atomic.Bool // CLOCK reference bit
	dead atomic.Bool // evicted, dropped or replaced: front must not use it
	hint atomic.Uint64
}

// Fewest entries of each cache, whatever the capacity asked for.
const (
	l2CacheMinEntries       = 32
	refcountCacheMinEntries = 4
)

// cacheEntries is how many entries of entrySize bytes a cache of
// capacityBytes holds.
func cacheEntries(capacityBytes int64, entrySize, minEntries int) int {
	return max(int(capacityBytes/int64(entrySize)), minEntries)
}

func newTableCache(entrySize int, capacityBytes int64, minEntries int) *tableCache {
	n := cacheEntries(capacityBytes, entrySize, minEntries)
	// As many front slots as entries (rounded up to a power of two), so a
	// cache that covers the disk has a slot for every guest slice.
	nf := 1 << bits.Len(uint(n-1))
	return &tableCache{
		front: make([]atomic.Pointer[cacheEntry], nf),
		mask:  uint64(nf - 1),
		index: make(map[int64]int),
		limit: n,
		size:  entrySize,
	}
}

// cached returns the bytes at off if the front slot picked by hint has
// them, else nil. It takes no lock; hint may be any value, and a stable
// one per off (for L2 slices, the guest slice number) makes it hit.
func (c *tableCache) cached(off int64, hint uint64) []byte {
	e := c.front[hint&c.mask].Load()
	if e == nil || e.off != off || e.dead.Load() {
		return nil
	}
	if !e.ref.Load() {
		e.ref.Store(true)
	}
	return e.buf
}

// get returns the cached bytes at off, loading them with load on a miss,
// and installs them in the front slot of hint. Callers try cached first.
func (c *tableCache) get(off int64, hint uint64, load func(buf []byte) error) ([]byte, error) {
	fs := &c.front[hint&c.mask]
	c.mu.RLock()
	if i, ok := c.index[off]; ok {
		e := c.slots[i]
		e.ref.Store(true)
		c.install(fs, e, hint)
		c.mu.RUnlock()
		return e.buf, nil
	}
	c.mu.RUnlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	if i, ok := c.index[off]; ok {
		e := c.slots[i]
		e.ref.Store(true)
		c.install(fs, e, hint)
		return e.buf, nil
	}
	buf := make([]byte, c.size)
	if err := load(buf); err != nil {
		return nil, err
	}
	c.install(fs, c.insertLocked(off, buf), hint)
	return buf, nil
}

// install publishes a resident entry in front slot fs. Callers hold mu (at
// least read-locked), so e cannot leave the cache meanwhile.
func (c *tableCache) install(fs *atomic.Pointer[cacheEntry], e *cacheEntry, hint uint64) {
	e.hint.Store(hint)
	fs.Store(e)
}

// put installs buf as the content at off (a freshly written table).
func (c *tableCache) put(off int64, buf []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if i, ok := c.index[off]; ok {
		c.retire(c.slots[i])
		e := &cacheEntry{off: off, buf: buf}
		e.ref.Store(true)
		c.slots[i] = e
		return
	}
	c.insertLocked(off, buf)
}

// insertLocked adds an entry for off, evicting one if the cache is full.
func (c *tableCache) insertLocked(off int64, buf []byte) *cacheEntry {
	e := &cacheEntry{off: off, buf: buf}
	e.ref.Store(true)
	if len(c.slots) < c.limit {
		c.slots = append(c.slots, e)
		c.index[off] = len(c.slots) - 1
		return e
	}
	for {
		s := c.slots[c.hand]
		if s != nil && s.ref.Load() {
			s.ref.Store(false)
			c.hand = (c.hand + 1) % len(c.slots)
			continue
		}
		if s != nil {
			delete(c.index, s.off)
			c.retire(s)
		}
		c.slots[c.hand] = e
		c.index[off] = c.hand
		c.hand = (c.hand + 1) % len(c.slots)
		return e
	}
}

// retire marks an entry that leaves the cache dead and takes it out of
// front (if it is still in the slot it was last installed in), so front
// holds no buffer longer than the cache does. Callers hold mu.
func (c *tableCache) retire(e *cacheEntry) {
	e.dead.Store(true)
	c.front[e.hint.Load()&c.mask].CompareAndSwap(e, nil)
}

// drop forgets any cached bytes in [off, off+n).
func (c *tableCache) drop(off, n int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for o := off - off%int64(c.size); o < off+n; o += int64(c.size) {
		if i, ok := c.index[o]; ok {
			delete(c.index, o)
			c.retire(c.slots[i])
			// Leave the slot empty and first in line for reuse.
			c.slots[i] = nil
		}
	}
}
