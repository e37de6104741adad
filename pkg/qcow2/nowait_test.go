package qcow2

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
)

// nowaitChain builds, in a temporary directory, a 4 MiB base (qcow2 or
// raw) of random data under an 8 MiB overlay (64 KiB clusters) that
// rewrites some clusters, zeroes others and leaves the rest, part of
// which lies past the base's end, to the base; it returns the overlay.
func nowaitChain(t *testing.T, baseFmt string) *Image {
	t.Helper()
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(1, 2))
	data := make([]byte, 4<<20)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	base := filepath.Join(dir, "base."+baseFmt)
	if baseFmt == "raw" {
		if err := os.WriteFile(base, data, 0o644); err != nil {
			t.Fatal(err)
		}
	} else {
		if err := Create(base, CreateOptions{Size: int64(len(data))}); err != nil {
			t.Fatal(err)
		}
		b, err := Open(base, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.WriteAt(data, 0); err != nil {
			t.Fatal(err)
		}
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
	}
	top := filepath.Join(dir, "top.qcow2")
	if err := Create(top, CreateOptions{Size: 8 << 20, BackingFile: filepath.Base(base), BackingFormat: baseFmt}); err != nil {
		t.Fatal(err)
	}
	img, err := Open(top, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { img.Close() })
	const cs = 64 << 10
	for c := int64(0); c < 128; c++ {
		switch c % 4 {
		case 1:
			if _, err := img.WriteAt(bytes.Repeat([]byte{byte(c)}, cs), c*cs); err != nil {
				t.Fatal(err)
			}
		case 2:
			if err := img.WriteZeroes(c*cs, cs, false); err != nil {
				t.Fatal(err)
			}
		}
	}
	return img
}

// ReadAtNoWait reads what ReadAt reads, from the overlay, from a qcow2 or
// raw backing file and as zeros past it, or declines; it declines while a
// writer holds the image lock.
func TestReadAtNoWaitAgreesWithReadAt(t *testing.T) {
	for _, baseFmt := range []string{"qcow2", "raw"} {
		t.Run(baseFmt, func(t *testing.T) {
			img := nowaitChain(t, baseFmt)
			// Warm the L2 caches and mappings: ReadAtNoWait only takes
			// what memory holds.
			if _, err := img.ReadAt(make([]byte, 8<<20), 0); err != nil {
				t.Fatal(err)
			}
			rng := rand.New(rand.NewPCG(3, 4))
			served := map[int64]int{} // by cluster kind (c % 4) and past the base (4)
			for range 5000 {
				n := 512 * (1 + rng.Int64N(16))
				off := rng.Int64N(8<<20-n) &^ 511
				want := make([]byte, n)
				if _, err := img.ReadAt(want, off); err != nil {
					t.Fatal(err)
				}
				got := make([]byte, n)
				k, err := img.ReadAtNoWait(got, off)
				switch {
				case errors.Is(err, ErrNoWaitUnsupported):
					t.Skip("no RWF_NOWAIT here")
				case errors.Is(err, ErrWouldBlock) || err == nil && k < len(got):
					continue
				case err != nil:
					t.Fatalf("[%d, +%d): %v", off, n, err)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("[%d, +%d): ReadAtNoWait differs from ReadAt", off, n)
				}
				kind := (off >> 16) % 4
				if kind != 1 && kind != 2 && off >= 4<<20 {
					kind = 4
				}
				served[kind]++
			}
			// Data of the overlay and of the base is served without
			// waiting (zero clusters and ranges past the base end may
			// decline).
			if served[1] == 0 || served[0]+served[3] == 0 {
				t.Errorf("served without waiting: %v; want overlay data (1) and base data (0, 3)", served)
			}
			img.mu.Lock()
			_, err := img.ReadAtNoWait(make([]byte, 4096), 65536)
			img.mu.Unlock()
			if !errors.Is(err, ErrWouldBlock) {
				t.Errorf("with the lock held by a writer: %v, want ErrWouldBlock", err)
			}
		})
	}
}

// Without a backing file an unallocated cluster reads as zeros.
func TestReadAtNoWaitUnallocatedStandalone(t *testing.T) {
	img, _ := openFilled(t, 4<<20, 1<<20, 0xaa, Options{})
	defer img.Close()
	if _, err := img.ReadAt(make([]byte, 4<<20), 0); err != nil {
		t.Fatal(err)
	}
	got := bytes.Repeat([]byte{1}, 4096)
	n, err := img.ReadAtNoWait(got, 2<<20)
	if errors.Is(err, ErrNoWaitUnsupported) {
		t.Skip("no RWF_NOWAIT here")
	}
	if err != nil || n != 4096 || !bytes.Equal(got, make([]byte, 4096)) {
		t.Fatalf("unallocated: %d, %v, zeros %v", n, err, bytes.Equal(got, make([]byte, 4096)))
	}
	n, err = img.ReadAtNoWait(got, 4096)
	if err != nil || n != 4096 || got[0] != 0xaa {
		t.Fatalf("data: %d, %v, %#x", n, err, got[0])
	}
}

// ReadAtNoWait racing writes, discards, flushes (which free host clusters
// for reuse) and zeroing of the same clusters: a read that succeeds after
// a write returned sees that write, and no read ever returns another
// cluster's data (a mapping read while its cluster was freed and reused).
// Most useful with -race; bounded work (8 clusters, 40 rounds each).
func TestReadAtNoWaitRacesWritesAndDiscards(t *testing.T) {
	const cs, nclu, rounds = 64 << 10, 8, 40
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	// The base's bytes are 0xF0: a high nibble no cluster writes.
	if err := os.WriteFile(base, bytes.Repeat([]byte{0xF0}, nclu*cs), 0o644); err != nil {
		t.Fatal(err)
	}
	top := filepath.Join(dir, "top.qcow2")
	if err := Create(top, CreateOptions{Size: nclu * cs, BackingFile: "base.raw", BackingFormat: "raw"}); err != nil {
		t.Fatal(err)
	}
	img, err := Open(top, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if _, err := img.ReadAtNoWait(make([]byte, 512), 0); errors.Is(err, ErrNoWaitUnsupported) {
		t.Skip("no RWF_NOWAIT")
	}
	var stop atomic.Bool
	var served atomic.Int64
	var wg sync.WaitGroup
	fail := make(chan string, 16)
	report := func(s string) {
		select {
		case fail <- s:
		default:
		}
	}
	// One writer per cluster: cluster c only ever holds bytes c<<4|g
	// (g in 1..15), zeros, or the base's 0xF0.
	for c := 0; c < nclu; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			off := int64(c) * cs
			got := make([]byte, 4096)
			for i := range rounds {
				v := byte(c<<4 | (i%15 + 1))
				if _, err := img.WriteAt(bytes.Repeat([]byte{v}, cs/2), off+int64(i%2)*cs/2); err != nil {
					report(err.Error())
					return
				}
				// The write returned: a read that succeeds must see it.
				in := int64(i%2)*cs/2 + 4096
				if n, err := img.ReadAtNoWait(got, off+in); err == nil && n == len(got) {
					if !bytes.Equal(got, bytes.Repeat([]byte{v}, 4096)) {
						report("ReadAtNoWait after a returned WriteAt saw other data")
					}
				}
				switch i % 5 {
				case 1:
					if err := img.Discard(off, cs); err != nil {
						report(err.Error())
						return
					}
				case 2:
					if err := img.Flush(); err != nil {
						report(err.Error())
						return
					}
				case 3:
					if err := img.WriteZeroes(off, cs, false); err != nil {
						report(err.Error())
						return
					}
				}
			}
		}()
	}
	// Readers: any byte must belong to the cluster read (or be 0 or 0xF0).
	var rg sync.WaitGroup
	for r := 0; r < 2; r++ {
		rg.Add(1)
		go func() {
			defer rg.Done()
			p := make([]byte, 4096)
			for k := 0; !stop.Load(); k++ {
				c := k % nclu
				off := int64(c)*cs + int64(k%16)*4096
				n, err := img.ReadAtNoWait(p, off)
				if err != nil || n != len(p) {
					img.ReadAt(p, off) // warm caches, like the server's fallback
					continue
				}
				served.Add(1)
				for _, b := range p {
					if b != 0 && b != 0xF0 && int(b>>4) != c {
						report("a read of a cluster returned another cluster's data")
						break
					}
				}
			}
		}()
	}
	wg.Wait()
	stop.Store(true)
	rg.Wait()
	close(fail)
	for s := range fail {
		t.Error(s)
	}
	t.Logf("reads served without waiting: %d", served.Load())
}
