package qcow2

import (
	"container/list"
	"sync"
)

// tableCache caches fixed-size pieces of metadata tables (L2 slices,
// refcount blocks) keyed by host offset. It is write-through: callers write
// the file first and then update the cached bytes, so nothing lives only in
// memory (DESIGN.md rule 1) and eviction never writes.
//
// Cached buffers are shared: readers use them under the image's read lock,
// and they are modified only under the image's write lock.
type tableCache struct {
	mu      sync.Mutex
	entries map[int64]*list.Element
	lru     list.List // front = most recently used
	limit   int
	size    int // bytes per entry
}

type cacheEntry struct {
	off int64
	buf []byte
}

func newTableCache(entrySize int, capacityBytes int64, minEntries int) *tableCache {
	n := max(int(capacityBytes/int64(entrySize)), minEntries)
	return &tableCache{entries: make(map[int64]*list.Element), limit: n, size: entrySize}
}

// get returns the cached bytes at off, loading them with load on a miss.
func (c *tableCache) get(off int64, load func(buf []byte) error) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.entries[off]; ok {
		c.lru.MoveToFront(e)
		return e.Value.(*cacheEntry).buf, nil
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
	if e, ok := c.entries[off]; ok {
		e.Value.(*cacheEntry).buf = buf
		c.lru.MoveToFront(e)
		return
	}
	c.insertLocked(off, buf)
}

func (c *tableCache) insertLocked(off int64, buf []byte) {
	c.entries[off] = c.lru.PushFront(&cacheEntry{off: off, buf: buf})
	for c.lru.Len() > c.limit {
		last := c.lru.Back()
		c.lru.Remove(last)
		delete(c.entries, last.Value.(*cacheEntry).off)
	}
}

// drop forgets any cached bytes in [off, off+n).
func (c *tableCache) drop(off, n int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for o := off - off%int64(c.size); o < off+n; o += int64(c.size) {
		if e, ok := c.entries[o]; ok {
			c.lru.Remove(e)
			delete(c.entries, o)
		}
	}
}
