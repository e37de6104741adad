package qcow2_test

import (
	"bytes"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// Reading a compressed cluster costs about a cluster of memory, whatever
// the compression type: a zstd decoder per read (with a 32 MiB window
// allowed) cost far more, and every read of a golden image's compressed
// clusters paid it.
func TestCompressedReadMemory(t *testing.T) {
	for _, ctype := range []string{"zlib", "zstd"} {
		t.Run(ctype, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "c.qcow2")
			const cs = 64 << 10
			if err := qcow2.Create(path, qcow2.CreateOptions{Size: 64 * cs, CompressionType: ctype}); err != nil {
				t.Fatal(err)
			}
			img, err := qcow2.Open(path, qcow2.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			data := bytes.Repeat([]byte("compressible cluster "), cs/20+1)[:cs]
			for i := range 64 {
				if err := img.WriteCompressed(data, int64(i)*cs); err != nil {
					t.Fatal(err)
				}
			}
			buf := make([]byte, cs)
			read := func(i int) {
				if _, err := img.ReadAt(buf, int64(i%64)*cs); err != nil || !bytes.Equal(buf, data) {
					t.Fatalf("read %d: %v", i, err)
				}
			}
			read(0) // first use: the shared decoder's setup
			const reads = 256
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			for i := range reads {
				read(i)
			}
			runtime.ReadMemStats(&after)
			per := (after.TotalAlloc - before.TotalAlloc) / reads
			t.Logf("%s: %d bytes allocated per compressed read of a %d-byte cluster", ctype, per, cs)
			if per > 3*cs {
				t.Fatalf("%s: %d bytes allocated per read, more than three clusters", ctype, per)
			}
		})
	}
}
