package qcow2

import "testing"

// BenchmarkEngineOverhead4KWriteBitmaps is the engine's cost of a 4 KiB
// random in-place write without the pwrite, with no bitmap and with one and
// four enabled bitmaps (the hot-path cost of keeping them).
func BenchmarkEngineOverhead4KWriteBitmaps(b *testing.B) {
	for _, nb := range []int{0, 1, 4} {
		b.Run(map[int]string{0: "none", 1: "one", 4: "four"}[nb], func(b *testing.B) {
			img, offs := overheadImage(b, func(img *Image) {
				for i := range nb {
					if err := img.AddBitmap(string(rune('a'+i)), 0, false); err != nil {
						b.Fatal(err)
					}
				}
			})
			buf := make([]byte, 4096)
			for _, off := range offs { // warm the L2 cache
				if _, err := img.WriteAt(buf, off); err != nil {
					b.Fatal(err)
				}
			}
			b.SetBytes(4096)
			i := 0
			for b.Loop() {
				if _, err := img.WriteAt(buf, offs[i&(len(offs)-1)]); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}
