package qcow2

import (
	"math/rand"
	"path/filepath"
	"testing"
)

// dataNopFile serves reads and writes below metadataEnd from the real file
// and returns at once for everything above it (the guest data of the
// preallocated image below), so a benchmark sees only the engine's own
// per-request work: locks, the L2 lookup, the range checks.
type dataNopFile struct {
	File
	metadataEnd int64
}

func (n dataNopFile) ReadAt(p []byte, off int64) (int, error) {
	if off < n.metadataEnd {
		return n.File.ReadAt(p, off)
	}
	return len(p), nil
}

func (n dataNopFile) WriteAt(p []byte, off int64) (int, error) {
	if off < n.metadataEnd {
		return n.File.WriteAt(p, off)
	}
	return len(p), nil
}

// overheadImage opens a 1 GiB metadata-preallocated image whose guest data
// I/O is dropped (dataNopFile); prepare runs before the wrapping. It also
// returns random 4 KiB-aligned offsets (a power-of-two count).
func overheadImage(b *testing.B, prepare func(*Image)) (*Image, []int64) {
	const size = 1 << 30
	p := filepath.Join(b.TempDir(), "a.qcow2")
	if err := Create(p, CreateOptions{Size: size, Preallocation: PreallocMetadata}); err != nil {
		b.Fatal(err)
	}
	img, err := Open(p, Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { img.Close() })
	if prepare != nil {
		prepare(img)
	}
	// Metadata preallocation puts every L2 table before the data.
	img.f = dataNopFile{File: img.f, metadataEnd: 1 << 22}
	img.fd, img.wfd = readFD(img.f), writeFD(img.f, img.readOnly)
	rng := rand.New(rand.NewSource(1))
	offs := make([]int64, 1<<16)
	for i := range offs {
		offs[i] = rng.Int63n(size/4096) * 4096
	}
	return img, offs
}

// BenchmarkEngineOverhead4KRead is the engine's cost of a 4 KiB random
// read without the pread of the data (compare with BenchmarkRead, where
// the pread itself costs about 1.1-1.3 µs on the page cache).
func BenchmarkEngineOverhead4KRead(b *testing.B) {
	img, offs := overheadImage(b, nil)
	buf := make([]byte, 4096)
	b.SetBytes(4096)
	i := 0
	for b.Loop() {
		if _, err := img.ReadAt(buf, offs[i&(len(offs)-1)]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkEngineOverhead4KWrite is the same for a 4 KiB in-place write
// (every cluster is preallocated and owned by the image) without the
// pwrite of the data.
func BenchmarkEngineOverhead4KWrite(b *testing.B) {
	img, offs := overheadImage(b, nil)
	buf := make([]byte, 4096)
	b.SetBytes(4096)
	i := 0
	for b.Loop() {
		if _, err := img.WriteAt(buf, offs[i&(len(offs)-1)]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
