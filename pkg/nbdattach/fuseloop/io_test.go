package fuseloop

import (
	"bytes"
	"math/rand/v2"
	"os"
	"sync"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/loopdev"
	"golang.org/x/sys/unix"
)

// Random writes through the loop device land in the backend byte for
// byte, from several writers at once, and read back through the device.
func TestRandomWritesReachBackend(t *testing.T) {
	for _, bs := range []int{512, 4096} {
		t.Run(map[int]string{512: "512", 4096: "4096"}[bs], func(t *testing.T) {
			const size = 32 << 20
			b := newBackend(t, size)
			a := attach(t, b, bs)
			if got := loopdev.Sysfs(a.Device(), "dio"); got != "1" {
				t.Errorf("loop direct I/O = %q, want 1", got)
			}
			dev, err := os.OpenFile(a.Device(), os.O_RDWR|unix.O_DIRECT, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer dev.Close()

			want := make([]byte, size)
			var mu sync.Mutex // want is shared; writes to it are ordered per range by rng choice below
			var wg sync.WaitGroup
			for w := range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rng := rand.New(rand.NewPCG(uint64(w), uint64(bs)))
					// Each writer owns a quarter of the device, so the
					// final content is known without ordering writers.
					base := int64(w) * size / 4
					for range 200 {
						n := (1 + rng.IntN(64)) * bs
						off := base + int64(rng.IntN((size/4-n)/bs))*int64(bs)
						p := alignedBuf(n)
						for i := range p {
							p[i] = byte(rng.Uint32())
						}
						if _, err := dev.WriteAt(p, off); err != nil {
							t.Error(err)
							return
						}
						mu.Lock()
						copy(want[off:], p)
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
			got, err := os.ReadFile(b.path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("backend differs from what was written at byte %d", firstDiff(got, want))
			}
			back := alignedBuf(size)
			if _, err := dev.ReadAt(back, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(back, want) {
				t.Fatalf("device reads back differently at byte %d", firstDiff(back, want))
			}
		})
	}
}

// alignedBuf returns n bytes aligned for O_DIRECT.
func alignedBuf(n int) []byte {
	p := make([]byte, n+4096)
	off := 4096 - int(uintptrOf(p)&4095)
	return p[off%4096 : off%4096+n]
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
