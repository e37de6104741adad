package qemutest

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"testing"
)

// DiffBytes returns "" when want and got are equal, otherwise a description
// of the difference: the lengths if they differ, the first differing offset
// (base is added to offsets, so callers can pass the guest offset of the
// slices), the number of differing bytes, and a hex dump of both around the
// first difference.
func DiffBytes(want, got []byte, base int64) string {
	if bytes.Equal(want, got) {
		return ""
	}
	var msg string
	if len(want) != len(got) {
		msg = fmt.Sprintf("length %d, want %d; ", len(got), len(want))
	}
	n := min(len(want), len(got))
	first, last, count := -1, -1, 0
	for i := 0; i < n; i++ {
		if want[i] != got[i] {
			if first < 0 {
				first = i
			}
			last = i
			count++
		}
	}
	if first < 0 {
		return msg + fmt.Sprintf("common prefix of %d bytes is equal", n)
	}
	lo := first &^ 15
	if lo >= 32 {
		lo -= 32
	}
	hi := min(n, (first&^15)+64)
	return msg + fmt.Sprintf("%d bytes differ in [%d, %d], first at offset %d (0x%x): got 0x%02x want 0x%02x\nwant at 0x%x:\n%sgot at 0x%x:\n%s",
		count, base+int64(first), base+int64(last), base+int64(first), base+int64(first), got[first], want[first],
		base+int64(lo), hex.Dump(want[lo:hi]), base+int64(lo), hex.Dump(got[lo:hi]))
}

// FilesDiff compares the files at a (expected) and b (actual) byte by byte
// and returns "" when they are equal, otherwise a DiffBytes-style
// description of the first differing chunk.
func FilesDiff(a, b string) (string, error) {
	fa, err := os.Open(a)
	if err != nil {
		return "", err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return "", err
	}
	defer fb.Close()
	return ReadersDiff(fa, fb)
}

// ReadersDiff compares two streams like FilesDiff.
func ReadersDiff(want, got io.Reader) (string, error) {
	const chunk = 1 << 20
	bw, bg := make([]byte, chunk), make([]byte, chunk)
	var off int64
	for {
		nw, errw := io.ReadFull(want, bw)
		ng, errg := io.ReadFull(got, bg)
		if errw != nil && errw != io.EOF && errw != io.ErrUnexpectedEOF {
			return "", errw
		}
		if errg != nil && errg != io.EOF && errg != io.ErrUnexpectedEOF {
			return "", errg
		}
		if d := DiffBytes(bw[:nw], bg[:ng], off); d != "" {
			return d, nil
		}
		if nw < chunk {
			return "", nil
		}
		off += int64(nw)
	}
}

// MustFilesEqual fails the test unless the files at want and got are equal.
func MustFilesEqual(t testing.TB, want, got string) {
	t.Helper()
	d, err := FilesDiff(want, got)
	if err != nil {
		t.Fatal(err)
	}
	if d != "" {
		t.Fatalf("%s differs from %s: %s", got, want, d)
	}
}

// MustReaderAtEqual reads size bytes of got in chunks of chunk bytes and
// fails the test at the first chunk that differs from want.
func MustReaderAtEqual(t testing.TB, want []byte, got io.ReaderAt, chunk int) {
	t.Helper()
	if chunk <= 0 {
		chunk = 1 << 20
	}
	buf := make([]byte, chunk)
	for off := 0; off < len(want); off += chunk {
		n := min(chunk, len(want)-off)
		m, err := got.ReadAt(buf[:n], int64(off))
		if m != n || (err != nil && err != io.EOF) {
			t.Fatalf("ReadAt(%d, %d) = %d, %v", off, n, m, err)
		}
		if d := DiffBytes(want[off:off+n], buf[:n], int64(off)); d != "" {
			t.Fatalf("ReadAt(%d, %d): %s", off, n, d)
		}
	}
}
