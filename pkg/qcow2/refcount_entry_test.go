package qcow2

import (
	"math/rand"
	"testing"
)

func TestRefcountEntryLayout(t *testing.T) {
	// Known encodings (QEMU layout).
	b := make([]byte, 8)
	setRefcount(b, 0, 0, 1)
	setRefcount(b, 3, 0, 1)
	setRefcount(b, 9, 0, 1)
	if b[0] != 0x09 || b[1] != 0x02 {
		t.Fatalf("order 0: % x", b)
	}
	b = make([]byte, 8)
	setRefcount(b, 1, 1, 3)
	setRefcount(b, 2, 1, 1)
	if b[0] != 0x1c {
		t.Fatalf("order 1: % x", b)
	}
	b = make([]byte, 8)
	setRefcount(b, 1, 2, 0xa)
	setRefcount(b, 2, 2, 0x5)
	if b[0] != 0xa0 || b[1] != 0x05 {
		t.Fatalf("order 2: % x", b)
	}
	b = make([]byte, 16)
	setRefcount(b, 1, 4, 0x1234)
	if b[2] != 0x12 || b[3] != 0x34 {
		t.Fatalf("order 4: % x", b)
	}
	setRefcount(b, 1, 5, 0xdeadbeef)
	if b[4] != 0xde || b[7] != 0xef {
		t.Fatalf("order 5: % x", b)
	}
	setRefcount(b, 1, 6, 0x0102030405060708)
	if b[8] != 1 || b[15] != 8 || getRefcount(b, 1, 6) != 0x0102030405060708 {
		t.Fatalf("order 6: % x", b)
	}
}

func TestRefcountEntryRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	for order := uint32(0); order <= maxRefcountOrder; order++ {
		const size = 512
		n := refcountEntriesPerBlock(size, order)
		block := make([]byte, size)
		want := make([]uint64, n)
		max := refcountMax(order)
		for round := 0; round < 4; round++ {
			for i := uint64(0); i < n; i++ {
				if rng.Intn(3) == 0 {
					continue
				}
				v := rng.Uint64() & max
				want[i] = v
				setRefcount(block, i, order, v)
			}
			for i := uint64(0); i < n; i++ {
				if got := getRefcount(block, i, order); got != want[i] {
					t.Fatalf("order %d idx %d: got %d want %d", order, i, got, want[i])
				}
			}
		}
		// Truncation to width, no bleeding into neighbours.
		for i := range block {
			block[i] = 0
		}
		setRefcount(block, 1, order, ^uint64(0))
		if getRefcount(block, 0, order) != 0 || getRefcount(block, 2, order) != 0 || getRefcount(block, 1, order) != max {
			t.Fatalf("order %d: neighbour bleed", order)
		}
	}
	if refcountMax(0) != 1 || refcountMax(4) != 65535 || refcountMax(6) != ^uint64(0) {
		t.Fatal("refcountMax")
	}
}
