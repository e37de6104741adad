package qcow2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// openFilled creates a v3 image of size bytes (default 64 KiB clusters)
// whose first fill bytes are b, and opens it through Open (an osFile, so
// guest data reads take the descriptor path).
func openFilled(t *testing.T, size, fill int64, b byte, opts Options) (*Image, string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "a.qcow2")
	if err := Create(p, CreateOptions{Size: size}); err != nil {
		t.Fatal(err)
	}
	img, err := Open(p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := img.WriteAt(bytes.Repeat([]byte{b}, int(fill)), 0); err != nil {
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	if img, err = Open(p, opts); err != nil {
		t.Fatal(err)
	}
	if img.fd < 0 {
		t.Fatal("an image opened with Open does not read through its descriptor")
	}
	return img, p
}

// holdFD opens copies of decoy until one gets descriptor number fd (the
// lowest free number is taken first) and returns them all open.
func holdFD(t *testing.T, decoy string, fd int) []*os.File {
	t.Helper()
	var held []*os.File
	t.Cleanup(func() {
		for _, f := range held {
			f.Close()
		}
	})
	for range 1024 {
		f, err := os.Open(decoy)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, f)
		if int(f.Fd()) == fd {
			return held
		}
	}
	t.Fatalf("descriptor %d was not reused by 1024 opens", fd)
	return nil
}

// A closed image must never pread its old descriptor number: once the
// number belongs to another file, such a read would return that file's
// bytes. Not parallel: it relies on the next open taking the number.
func TestReadAfterCloseNeverReadsReusedFD(t *testing.T) {
	const size, fill = 4 << 20, 1 << 20
	img, p := openFilled(t, size, fill, 0xaa, Options{})
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	decoy := filepath.Join(t.TempDir(), "decoy")
	if err := os.WriteFile(decoy, bytes.Repeat([]byte{0x55}, int(fi.Size())), 0o644); err != nil {
		t.Fatal(err)
	}

	// Sequential: read (caching the L2 slice: the fast path), close, let
	// another file take the number, read again.
	if _, err := img.ReadAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	fd := img.fd
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	holdFD(t, decoy, fd)
	// One cluster (the fast path) and several (the general path).
	for _, n := range []int{4096, 256 << 10} {
		buf := make([]byte, n)
		got, err := img.ReadAt(buf, 0)
		if !errors.Is(err, ErrClosed) || got != 0 {
			t.Fatalf("%d-byte read after Close: %d, %v; want ErrClosed", n, got, err)
		}
		if bytes.IndexByte(buf, 0x55) >= 0 {
			t.Fatalf("%d-byte read after Close returned another file's bytes", n)
		}
	}

	// Concurrent: readers racing with Close and the reuse of the number.
	img, _ = openFilled(t, size, fill, 0xaa, Options{})
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	start := make(chan struct{})
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 4096<<(g%2*4))
			after := -1 // reads left once Close has been seen
			for i := 0; after != 0; i++ {
				clear(buf)
				off := int64(i*4096) % (fill - int64(len(buf)))
				_, err := img.ReadAt(buf, off)
				switch {
				case bytes.IndexByte(buf, 0x55) >= 0:
					errs <- errors.New("a read racing with Close returned another file's bytes")
					return
				case err == nil && bytes.Count(buf, []byte{0xaa}) != len(buf):
					errs <- errors.New("a read before Close returned wrong data")
					return
				case errors.Is(err, ErrClosed):
					if after < 0 {
						// Keep reading after the number is reused.
						<-start
						after = 1000
					}
					after--
				case err != nil:
					errs <- err
					return
				}
			}
		}()
	}
	fd = img.fd
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	holdFD(t, decoy, fd)
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// Other readers of guest data (a snapshot view) share the image's
// descriptor: after Close they must not pread it either.
func TestSnapshotViewReadAfterCloseNeverReadsReusedFD(t *testing.T) {
	const size, fill = 4 << 20, 1 << 20
	img, p := openFilled(t, size, fill, 0xaa, Options{})
	if _, err := img.CreateSnapshot("s"); err != nil {
		t.Fatal(err)
	}
	v, err := img.OpenSnapshot("s")
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	if _, err := v.ReadAt(buf, 0); err != nil || buf[0] != 0xaa { // caches the L2 slice
		t.Fatalf("snapshot read: %v, %#x", err, buf[0])
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	decoy := filepath.Join(t.TempDir(), "decoy")
	if err := os.WriteFile(decoy, bytes.Repeat([]byte{0x55}, int(fi.Size())), 0o644); err != nil {
		t.Fatal(err)
	}
	fd := img.fd
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	holdFD(t, decoy, fd)
	clear(buf)
	_, err = v.ReadAt(buf, 0)
	if err == nil || bytes.IndexByte(buf, 0x55) >= 0 {
		t.Fatalf("snapshot read after Close: %v, first byte %#x; want an error and no other file's bytes", err, buf[0])
	}
}

// readHost through the descriptor reads what readFull of the File reads,
// in the file and across its end (zeros past it).
func TestReadHostMatchesFileRead(t *testing.T) {
	img, _ := openFilled(t, 4<<20, 1<<20, 0xaa, Options{ReadOnly: true})
	defer img.Close()
	fsize, err := img.f.Size()
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{0, 1000, fsize - 4096, fsize - 100, fsize, fsize + 8192} {
		want := bytes.Repeat([]byte{1}, 4096)
		if err := readFull(img.f, want, off); err != nil {
			t.Fatal(err)
		}
		got := bytes.Repeat([]byte{2}, 4096)
		if err := img.readHost(got, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("readHost at %d differs from the File's ReadAt", off)
		}
	}
}

// dataHost is a shortcut for a subset of what lookup decodes: for any L2
// entry it either declines or agrees with lookup (plain data at the same
// host offset), and it takes every plain data entry of a one-cluster read.
func TestDataHostAgreesWithLookup(t *testing.T) {
	for _, compat := range []string{"1.1", "0.10"} {
		t.Run(compat, func(t *testing.T) {
			const cs = 64 << 10
			p := filepath.Join(t.TempDir(), "a.qcow2")
			if err := Create(p, CreateOptions{Size: 64 << 20, Compat: compat}); err != nil {
				t.Fatal(err)
			}
			img, err := Open(p, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := img.WriteAt(make([]byte, 4096), 0); err != nil {
				t.Fatal(err)
			}
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}
			// Read-only: a malformed entry is reported, not marked corrupt.
			if img, err = Open(p, Options{ReadOnly: true}); err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			l2off := int64(img.l1[0] & l1OffsetMask)
			rng := rand.New(rand.NewPCG(7, 8))
			var took, plain int
			for range 20000 {
				vi := rng.Int64N(img.size / cs)
				buf, _, err := img.l2Slice(l2off, vi)
				if err != nil {
					t.Fatal(err)
				}
				e := uint64(0)
				switch rng.IntN(3) {
				case 0:
					e = uint64(rng.Int64N(1<<20)) * cs // aligned, maybe 0
				case 1:
					e = uint64(rng.Int64N(1<<36)) << 9 // mostly unaligned
				}
				e |= rng.Uint64() & (oflagCopied | oflagCompressed | oflagZero | 0x1fe | 0x3f<<56)
				if rng.IntN(2) == 0 {
					e &^= oflagCompressed
				}
				binary.BigEndian.PutUint64(buf[(vi&(img.sliceEntries-1))*8:], e)
				img.forgetMirror(vi) // as writeL2 does
				in := rng.Int64N(cs)
				n := rng.Int64N(cs+1) + rng.Int64N(2)*cs // crossing the cluster end at times
				off := vi*cs + in
				host, ok := img.dataHost(off, n)
				m, lerr := img.lookup(vi)
				one := n > 0 && in+n <= cs && off+n <= img.size
				isData := lerr == nil && m.kind == kindData
				if ok && (!isData || !one || host != m.host+in) {
					t.Fatalf("entry %#x, [%d, +%d): dataHost says host %#x, lookup says %+v, %v", e, off, n, host, m, lerr)
				}
				if !ok && isData && one && e&oflagZero == 0 {
					t.Fatalf("entry %#x, [%d, +%d): dataHost declines plain data", e, off, n)
				}
				if ok {
					took++
				}
				if isData {
					plain++
				}
			}
			if took == 0 || plain == took {
				t.Fatalf("%d of %d data entries taken: the test does not reach both outcomes", took, plain)
			}
		})
	}
}

// dataHost declines everything an extended-L2 image holds, and requests
// outside the image or of no bytes.
func TestDataHostDeclines(t *testing.T) {
	img, _ := openFilled(t, 4<<20, 1<<20, 0xaa, Options{ReadOnly: true})
	defer img.Close()
	for _, r := range [][2]int64{{0, 0}, {-4096, 4096}, {4<<20 - 4096, 8192}, {4 << 20, 1}, {65536 - 1, 2}} {
		if _, ok := img.dataHost(r[0], r[1]); ok {
			t.Fatalf("dataHost takes [%d, +%d)", r[0], r[1])
		}
	}
	if _, err := img.ReadAt(make([]byte, 4096), 0); err != nil { // loads the L2 slice
		t.Fatal(err)
	}
	if _, ok := img.dataHost(0, 4096); !ok {
		t.Fatal("dataHost declines a plain data read")
	}
	img.ext = true
	defer func() { img.ext = false }()
	if _, ok := img.dataHost(0, 4096); ok {
		t.Fatal("dataHost takes a read of an extended-L2 image")
	}
}
