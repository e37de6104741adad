package qcow2

import (
	"sync"
	"sync/atomic"
)

// tableCache caches fixed-size pieces of metadata tables (L2 slices,
// refcount blocks) keyed by host offset. It is write-through: callers write
// the file first and then update the cached bytes, so nothing lives only in
// memory (DESIGN.md rule 1) and eviction never writes.
//
// Hits take only a read lock and set a reference bit; eviction is CLOCK
// (second chance), so concurrent readers do not serialise on LRU upkeep.
// Cached buffers are shared: readers use them under the image's read lock,
// and they are modified only under the image's write lock.
type tableCache struct {
	mu    sync.RWMutex
	index map[int64]int // host offset -> slot
	slots []cacheSlot
	hand  int
	limit int
	size  int // bytes per entry
}

type cacheSlot struct {
	off int64
	buf []byte
	ref atomic.Bool
}

func newTableCache(entrySize int, capacityBytes int64, minEntries int) *tableCache {
	n := max(int(capacityBytes/int64(entrySize)), minEntries)
	return &tableCache{index: make(map[int64]int), limit: n, size: entrySize}
}

// get returns the cached bytes at off, loading them with load on a miss.
func (c *tableCache) get(off int64, load func(buf []byte) error) ([]byte, error) {
	c.mu.RLock()
	if i, ok := c.index[off]; ok {
		s := &c.slots[i]
		buf := s.buf
		if !s.ref.Load() {
			s.ref.Store(true)
		}
		c.mu.RUnlock()
		return buf, nil
	}
	c.mu.RUnlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	if i, ok := c.index[off]; ok {
		c.slots[i].ref.Store(true)
		return c.slots[i].buf, nil
	}
	buf := make([]byte, c.size)
	if err := load(buf); err != nil {
		return nil, err
	}
	c.insertLocked(off, buf)
	return buf, nil
}

// put installs buf as the content at off (a freshly written table).
func (c *tableCache) put(off int64, buf []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if i, ok := c.index[off]; ok {
		c.slots[i].buf = buf
		c.slots[i].ref.Store(true)
		return
	}
	c.insertLocked(off, buf)
}

func (c *tableCache) insertLocked(off int64, buf []byte) {
	if len(c.slots) < c.limit {
		c.slots = append(c.slots, cacheSlot{off: off, buf: buf})
		c.slots[len(c.slots)-1].ref.Store(true)
		c.index[off] = len(c.slots) - 1
		return
	}
	for {
		s := &c.slots[c.hand]
		if s.ref.Load() {
			s.ref.Store(false)
			c.hand = (c.hand + 1) % len(c.slots)
			continue
		}
		delete(c.index, s.off)
		s.off, s.buf = off, buf
		s.ref.Store(true)
		c.index[off] = c.hand
		c.hand = (c.hand + 1) % len(c.slots)
		return
	}
}

// drop forgets any cached bytes in [off, off+n).
func (c *tableCache) drop(off, n int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for o := off - off%int64(c.size); o < off+n; o += int64(c.size) {
		if i, ok := c.index[o]; ok {
			delete(c.index, o)
			// Leave the slot empty and first in line for reuse.
			c.slots[i].off, c.slots[i].buf = -1, nil
			c.slots[i].ref.Store(false)
		}
	}
}
