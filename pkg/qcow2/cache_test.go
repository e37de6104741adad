package qcow2

import (
	"bytes"
	"testing"
)

// loader returns a load function that fills a buffer with b and counts
// its calls.
func loader(b byte, calls *int) func([]byte) error {
	return func(p []byte) error {
		*calls++
		for i := range p {
			p[i] = b
		}
		return nil
	}
}

// lookupCache is how the engine reads a cache: lock-free first, then get.
func lookupCache(c *tableCache, off int64, hint uint64, load func([]byte) error) []byte {
	if buf := c.cached(off, hint); buf != nil {
		return buf
	}
	buf, err := c.get(off, hint, load)
	if err != nil {
		panic(err)
	}
	return buf
}

// TestTableCacheFrontNeverServesRetiredEntries: a table dropped (its
// cluster freed and reused), replaced by put, or evicted must not be served
// by the lock-free front afterwards, even through the same hint.
func TestTableCacheFrontNeverServesRetiredEntries(t *testing.T) {
	const size = 16
	c := newTableCache(size, 4*size, 4)
	var calls int

	a := lookupCache(c, 0, 7, loader('a', &calls))
	if got := lookupCache(c, 0, 7, loader('x', &calls)); &got[0] != &a[0] || calls != 1 {
		t.Fatalf("second lookup did not hit: %d loads", calls)
	}

	// Dropped, then the cluster holds a new table: the new bytes are read.
	c.drop(0, size)
	if c.cached(0, 7) != nil {
		t.Fatal("front still serves a dropped entry")
	}
	if got := lookupCache(c, 0, 7, loader('b', &calls)); got[0] != 'b' {
		t.Fatalf("after drop: read %q, want the reloaded table", got[0])
	}

	// Replaced by put.
	fresh := bytes.Repeat([]byte{'p'}, size)
	c.put(0, fresh)
	if got := lookupCache(c, 0, 7, loader('x', &calls)); got[0] != 'p' {
		t.Fatalf("after put: read %q", got[0])
	}

	// Evicted: fill the cache with other offsets (other hints), then load
	// offset 0 again with different content.
	for i := int64(1); i <= 8; i++ {
		lookupCache(c, i*size, uint64(i), loader('o', &calls))
	}
	if _, ok := c.index[0]; ok {
		t.Fatal("offset 0 was not evicted")
	}
	if c.cached(0, 7) != nil {
		t.Fatal("front still serves an evicted entry")
	}
	for i := range c.front {
		if e := c.front[i].Load(); e != nil {
			if j, ok := c.index[e.off]; !ok || c.slots[j] != e {
				t.Fatalf("front slot %d holds an entry (offset %d) that is not resident", i, e.off)
			}
		}
	}
	if got := lookupCache(c, 0, 7, loader('e', &calls)); got[0] != 'e' {
		t.Fatalf("after eviction: read %q", got[0])
	}

	// Two offsets sharing a front slot both stay correct.
	x := lookupCache(c, 100*size, 3, loader('x', &calls))
	y := lookupCache(c, 200*size, 3, loader('y', &calls))
	if x[0] != 'x' || y[0] != 'y' || lookupCache(c, 100*size, 3, loader('z', &calls))[0] != 'x' {
		t.Fatal("aliased front slot served the wrong table")
	}
}
