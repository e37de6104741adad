package nbdattach

import (
	"math/bits"
	"sync"
)

// Buffers for payloads come from per-size-class pools (powers of two from
// 4 KiB to maxPayload), so that a steady stream of requests allocates
// nothing.
const (
	minPoolShift = 12
	maxPoolShift = 25 // 32 MiB = maxPayload
)

var bufPools [maxPoolShift - minPoolShift + 1]sync.Pool

func poolClass(n int) int {
	if n <= 1<<minPoolShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minPoolShift
}

// getBuf returns a buffer of length n (n <= maxPayload) from the pools.
func getBuf(n int) *[]byte {
	c := poolClass(n)
	if p, ok := bufPools[c].Get().(*[]byte); ok {
		*p = (*p)[:n]
		return p
	}
	b := make([]byte, n, 1<<(c+minPoolShift))
	return &b
}

// putBuf returns a buffer from getBuf to its pool.
func putBuf(p *[]byte) {
	if p == nil {
		return
	}
	c := poolClass(cap(*p))
	if cap(*p) != 1<<(c+minPoolShift) {
		return
	}
	bufPools[c].Put(p)
}
