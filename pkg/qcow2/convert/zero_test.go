package convert

import (
	"slices"
	"testing"
)

func TestNonZeroRuns(t *testing.T) {
	p := make([]byte, 20480)
	p[5000] = 1  // block 1 (4k blocks, aligned to the absolute offset)
	p[9000] = 1  // block 2: merged with block 1 into one run
	p[17000] = 1 // block 4; block 3 is all zeros
	got := nonZeroRuns(p, 1<<20, 4096)
	want := []byteRun{{1<<20 + 4096, 1<<20 + 12288}, {1<<20 + 16384, 1<<20 + 20480}}
	if !slices.Equal(got, want) {
		t.Fatalf("runs %v, want %v", got, want)
	}
	if got := nonZeroRuns(p, 512, 0); !slices.Equal(got, []byteRun{{512, 512 + 20480}}) {
		t.Fatalf("sparse 0: runs %v", got)
	}
}

func TestIsZero(t *testing.T) {
	for _, n := range []int{0, 1, 7, 8, 9, 4096} {
		b := make([]byte, n)
		if !IsZero(b) {
			t.Errorf("%d zero bytes: not zero", n)
		}
		for i := range n {
			b[i] = 1
			if IsZero(b) {
				t.Errorf("%d bytes with byte %d set: zero", n, i)
			}
			b[i] = 0
		}
	}
}
