package qcow2

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/qemutest"
	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/zstd"
)

// cwData returns one cluster of content of the given kind: compressible
// text-like data, incompressible random bytes, zeros, or half and half.
func cwData(rng *rand.Rand, kind int, cs int64) []byte {
	p := make([]byte, cs)
	switch kind {
	case 0:
		word := fmt.Sprintf("cluster %d says hello; ", rng.Intn(1000))
		for i := range p {
			p[i] = word[i%len(word)] + byte(i/4096)
		}
	case 1:
		rng.Read(p)
	case 2:
	case 3:
		rng.Read(p[:cs/2])
	}
	return p
}

// cwCheckQemu runs qemu-img check and compare (against raw) on path.
func cwCheckQemu(t *testing.T, path, raw string) {
	t.Helper()
	qemutest.MustCheckClean(t, path, "qcow2")
	qemutest.Run(t, "qemu-img", "compare", "-f", "raw", "-F", "qcow2", raw, path)
}

// TestWriteCompressedInterop writes compressed images (zlib and zstd,
// 4K and 64K clusters, 16- and 1-bit refcounts), in batches and one
// cluster at a time; QEMU must read them byte-exact and check them clean.
func TestWriteCompressedInterop(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	for _, tc := range []struct {
		ctype string
		cs    int64
		rbits int
	}{
		{"zlib", 4 << 10, 16}, {"zlib", 64 << 10, 16}, {"zstd", 4 << 10, 16}, {"zstd", 64 << 10, 16},
		{"zlib", 4 << 10, 1}, {"zstd", 512, 2},
	} {
		t.Run(fmt.Sprintf("%s-%d-r%d", tc.ctype, tc.cs, tc.rbits), func(t *testing.T) {
			dir := t.TempDir()
			path, raw := filepath.Join(dir, "c.qcow2"), filepath.Join(dir, "c.raw")
			nclusters := int64(96)
			size := nclusters * tc.cs
			if tc.cs > 1536 {
				size -= 1536 // the last cluster is partial
			}
			if err := Create(path, CreateOptions{Size: size, ClusterSize: tc.cs, RefcountBits: tc.rbits, CompressionType: tc.ctype}); err != nil {
				t.Fatal(err)
			}
			img, err := Open(path, Options{})
			if err != nil {
				t.Fatal(err)
			}
			want := make([]byte, size)
			rng := rand.New(rand.NewSource(int64(tc.cs) + int64(len(tc.ctype)) + int64(tc.rbits)))
			var batch []CompressedCluster
			for vi := int64(0); vi < nclusters; vi++ {
				if vi%7 == 5 {
					continue // left unallocated
				}
				p := cwData(rng, rng.Intn(4), tc.cs)
				if end := (vi + 1) * tc.cs; end > size {
					p = p[:size-vi*tc.cs]
				}
				copy(want[vi*tc.cs:], p)
				if vi < 10 {
					if err := img.WriteCompressed(p, vi*tc.cs); err != nil {
						t.Fatal(err)
					}
					continue
				}
				batch = append(batch, CompressedCluster{Off: vi * tc.cs, Data: p})
				if len(batch) == 17 {
					if err := img.WriteCompressedClusters(batch); err != nil {
						t.Fatal(err)
					}
					batch = nil
				}
			}
			if err := img.WriteCompressedClusters(batch); err != nil {
				t.Fatal(err)
			}
			qemutest.MustReaderAtEqual(t, want, img, int(tc.cs)*3)
			// A compressed write onto an allocated cluster is refused.
			if err := img.WriteCompressed(make([]byte, tc.cs), 0); err == nil || !strings.Contains(err.Error(), "already allocated") {
				t.Fatalf("compressed write over an allocated cluster: %v", err)
			}
			if err := img.WriteCompressed(make([]byte, tc.cs), tc.cs/2); err == nil {
				t.Fatal("unaligned compressed write accepted")
			}
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(raw, want, 0o644); err != nil {
				t.Fatal(err)
			}
			cwCheckQemu(t, path, raw)
			r := qemutest.Check(t, path, "qcow2", "")
			if r.CompressedClusters == 0 {
				t.Fatalf("no compressed clusters: %+v", r)
			}

			// Guest writes into compressed clusters rewrite them
			// uncompressed; zeroing one and compressing again works.
			img, err = Open(path, Options{})
			if err != nil {
				t.Fatal(err)
			}
			for _, off := range []int64{3*tc.cs + 100, 20 * tc.cs, 40*tc.cs - 7} {
				p := bytes.Repeat([]byte{0xa5}, 300)
				if _, err := img.WriteAt(p, off); err != nil {
					t.Fatal(err)
				}
				copy(want[off:], p)
			}
			if err := img.WriteZeroes(30*tc.cs, tc.cs, true); err != nil {
				t.Fatal(err)
			}
			if err := img.Flush(); err != nil {
				t.Fatal(err)
			}
			p := cwData(rng, 0, tc.cs)
			copy(want[30*tc.cs:], p)
			if err := img.WriteCompressed(p, 30*tc.cs); err != nil {
				t.Fatal(err)
			}
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(raw, want, 0o644); err != nil {
				t.Fatal(err)
			}
			cwCheckQemu(t, path, raw)
		})
	}
}

// TestWriteCompressedNoReuseOfFreedPackingCluster: the packing cluster of
// one call is not reused by the next once its streams were overwritten and
// freed (a flush drops its refcount and the space may go to other data).
func TestWriteCompressedNoReuseOfFreedPackingCluster(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	path, raw := filepath.Join(dir, "c.qcow2"), filepath.Join(dir, "c.raw")
	const cs = 4096
	if err := Create(path, CreateOptions{Size: 64 * cs, ClusterSize: cs}); err != nil {
		t.Fatal(err)
	}
	img, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 64*cs)
	small := bytes.Repeat([]byte("abcd"), cs/4)
	if err := img.WriteCompressed(small, 0); err != nil {
		t.Fatal(err)
	}
	copy(want, small)
	full := bytes.Repeat([]byte{7}, cs)
	if _, err := img.WriteAt(full, 0); err != nil { // unlinks the stream
		t.Fatal(err)
	}
	copy(want, full)
	if err := img.Flush(); err != nil { // frees the packing cluster
		t.Fatal(err)
	}
	for i := int64(1); i < 40; i++ { // may reuse it for plain data
		p := bytes.Repeat([]byte{byte(i)}, cs)
		if _, err := img.WriteAt(p, i*cs); err != nil {
			t.Fatal(err)
		}
		copy(want[i*cs:], p)
	}
	if err := img.WriteCompressed(small, 50*cs); err != nil {
		t.Fatal(err)
	}
	copy(want[50*cs:], small)
	qemutest.MustReaderAtEqual(t, want, img, cs)
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(raw, want, 0o644); err != nil {
		t.Fatal(err)
	}
	cwCheckQemu(t, path, raw)
}

// TestWriteCompressedPacks: small streams share host clusters.
func TestWriteCompressedPacks(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c.qcow2")
	const cs = 64 << 10
	if err := Create(path, CreateOptions{Size: 256 * cs, ClusterSize: cs}); err != nil {
		t.Fatal(err)
	}
	img, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var batch []CompressedCluster
	for i := int64(0); i < 256; i++ {
		batch = append(batch, CompressedCluster{Off: i * cs, Data: bytes.Repeat([]byte{byte(i)}, cs)})
	}
	if err := img.WriteCompressedClusters(batch); err != nil {
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	// Header, refcount table and block, L1, L2 and a few packing clusters.
	if st.Size() > 10*cs {
		t.Fatalf("256 compressed uniform clusters take %d bytes", st.Size())
	}
	img, err = Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	buf := make([]byte, cs)
	for i := int64(0); i < 256; i += 37 {
		if _, err := img.ReadAt(buf, i*cs); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, bytes.Repeat([]byte{byte(i)}, cs)) {
			t.Fatalf("cluster %d reads back wrong", i)
		}
	}
}

// TestCompressedBombRefused: a hand-made compressed cluster whose stream
// inflates past the cluster is an error, and reading it allocates little.
func TestCompressedBombRefused(t *testing.T) {
	for _, ctype := range []string{"zlib", "zstd"} {
		t.Run(ctype, func(t *testing.T) {
			const cs = 4096
			path := filepath.Join(t.TempDir(), "bomb.qcow2")
			if err := Create(path, CreateOptions{Size: 16 * cs, ClusterSize: cs, CompressionType: ctype}); err != nil {
				t.Fatal(err)
			}
			img, err := Open(path, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			zeros := make([]byte, 6<<20)
			var stream []byte
			if ctype == "zlib" {
				var b bytes.Buffer
				fw, _ := flate.NewWriter(&b, flate.BestCompression)
				fw.Write(zeros)
				fw.Close()
				stream = b.Bytes()
			} else {
				enc, _ := zstd.NewWriter(nil)
				stream = enc.EncodeAll(zeros, nil)
			}
			if int64(len(stream)) >= 2*cs-512 {
				t.Fatalf("bomb stream of %d bytes does not fit a descriptor", len(stream))
			}
			// Hand-link it: two pool clusters, the stream, an L2 entry.
			img.mu.Lock()
			if _, err := img.prepareL2(0); err != nil {
				t.Fatal(err)
			}
			c1, _ := img.takeCluster()
			c2, _ := img.takeCluster()
			if c2 != c1+1 {
				t.Fatalf("pool clusters %d, %d not contiguous", c1, c2)
			}
			if _, err := img.f.WriteAt(stream, c1*cs); err != nil {
				t.Fatal(err)
			}
			e, err := img.compressedEntry(c1*cs, int64(len(stream)))
			if err != nil {
				t.Fatal(err)
			}
			if err := img.writeL2([]l2Update{{0, e, 0}}); err != nil {
				t.Fatal(err)
			}
			img.mu.Unlock()
			zeros = nil
			runtime.GC()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err = img.ReadAt(make([]byte, cs), 0)
			runtime.ReadMemStats(&after)
			if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "cluster") {
				t.Fatalf("reading a decompression bomb: %v", err)
			}
			t.Logf("refused: %v", err)
			if d := after.TotalAlloc - before.TotalAlloc; d > 8<<20 {
				t.Fatalf("reading a decompression bomb allocated %d bytes", d)
			}
		})
	}
}

// TestCreateCompressionType: the header records zstd; zstd needs v3.
func TestCreateCompressionType(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "z.qcow2")
	if err := Create(p, CreateOptions{Size: 1 << 20, CompressionType: "zstd"}); err != nil {
		t.Fatal(err)
	}
	img, err := Open(p, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	h := img.Header()
	img.Close()
	if h.CompressionType != 1 || h.IncompatibleFeatures&incompatCompression == 0 {
		t.Fatalf("zstd header: type %d incompat %#x", h.CompressionType, h.IncompatibleFeatures)
	}
	if err := Create(filepath.Join(dir, "v2.qcow2"), CreateOptions{Size: 1 << 20, Compat: "0.10", CompressionType: "zstd"}); err == nil {
		t.Fatal("zstd with compat 0.10 accepted")
	}
	if err := Create(filepath.Join(dir, "x.qcow2"), CreateOptions{Size: 1 << 20, CompressionType: "lz4"}); err == nil {
		t.Fatal("unknown compression type accepted")
	}
}

// TestCompressedHighEntropyTextAndShortTail: base64 text (6 bits a byte,
// no repeats) must still compress with zlib (the windowed writer alone
// stored it raw), QEMU must read the Huffman-only stream, and the last
// cluster of an image whose size is not 512-aligned may be given short.
func TestCompressedHighEntropyTextAndShortTail(t *testing.T) {
	testtools.Need(t, "qemu-img")
	const size = 4000000 // rounds up to 4000256 in the image
	rng := rand.New(rand.NewSource(7))
	raw := make([]byte, size)
	for i := range raw {
		raw[i] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[rng.Intn(64)]
	}
	dir := t.TempDir()
	rawPath, path := filepath.Join(dir, "src.raw"), filepath.Join(dir, "c.qcow2")
	if err := os.WriteFile(rawPath, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Create(path, CreateOptions{Size: size}); err != nil {
		t.Fatal(err)
	}
	img, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var batch []CompressedCluster
	for off := int64(0); off < size; off += img.cs {
		batch = append(batch, CompressedCluster{Off: off, Data: raw[off:min(off+img.cs, size)]})
	}
	if err := img.WriteCompressedClusters(batch); err != nil {
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() > size*7/8 {
		t.Fatalf("base64 text did not compress: %d bytes for %d", st.Size(), size)
	}
	qemutest.MustCheckClean(t, path, "qcow2")
	// qemu-img compare treats the 256 bytes the image has beyond the raw
	// file as zeros, which they are.
	qemutest.Run(t, "qemu-img", "compare", "-f", "raw", "-F", "qcow2", rawPath, path)
}
