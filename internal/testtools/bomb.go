package testtools

import (
	"bytes"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// ZstdRepeat compresses n bytes of b, streaming: a decompression bomb of
// any size from a few KiB of memory.
func ZstdRepeat(t testing.TB, b byte, n int) []byte {
	t.Helper()
	var out bytes.Buffer
	w, err := zstd.NewWriter(&out, zstd.WithEncoderLevel(zstd.SpeedFastest))
	if err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte{b}, 1<<20)
	for range n / len(chunk) {
		if _, err := w.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}
