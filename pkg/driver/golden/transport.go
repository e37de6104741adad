package golden

import (
	"bufio"
	"bytes"
	"io"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// Transport compression, recognised by magic.
var (
	gzipMagic = []byte{0x1f, 0x8b}
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// zstdMaxWindow bounds the memory a zstd stream can make the decoder
// take (its window): 128 MiB is zstd --long=27, more than any ordinary
// compressor level uses.
const zstdMaxWindow = 128 << 20

// decompressed is the content of a fetched stream: r itself, or r
// decompressed. kind is "", "gzip" or "zstd".
type decompressed struct {
	io.Reader
	kind  string
	close func()
}

// decompress recognises gzip and zstd at the start of br and returns a
// reader of the decompressed content; anything else is returned as it is.
// A stream that starts like one but is not is ErrInvalid.
func decompress(br *bufio.Reader) (decompressed, error) {
	head, err := br.Peek(4)
	if err != nil && err != io.EOF {
		return decompressed{}, err
	}
	switch {
	case bytes.HasPrefix(head, gzipMagic):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return decompressed{}, streamErr("gzip", err)
		}
		return decompressed{Reader: zr, kind: "gzip", close: func() { zr.Close() }}, nil
	case bytes.HasPrefix(head, zstdMagic):
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(zstdMaxWindow), zstd.WithDecoderLowmem(true))
		if err != nil {
			return decompressed{}, streamErr("zstd", err)
		}
		return decompressed{Reader: zr, kind: "zstd", close: zr.Close}, nil
	}
	return decompressed{Reader: br, close: func() {}}, nil
}

// streamErr is a decompressor's complaint about its input.
func streamErr(kind string, err error) error {
	return invalidf("the %s stream is corrupt: %v", kind, err)
}

// Expansion bounds of a decompressed stream (doc.go): the bytes that are
// not zero (they take disk space) and all bytes, each against the bytes
// fetched, once past a floor that any ordinary image reaches at a low
// ratio.
const (
	maxDataRatio  = 1024
	dataFloor     = 64 << 20
	maxTotalRatio = 4096
	totalFloor    = 1 << 30
)

// bombGuard bounds what a decompressed stream may expand to. A stream
// that was not compressed has no bounds here: the bytes fetched are
// bounded as they are read (fetchReader).
type bombGuard struct {
	kind    string       // "gzip" or "zstd"; "": not compressed
	max     int64        // bound on all bytes of the stream
	fetched func() int64 // bytes fetched so far
}

// check refuses a stream that has produced total bytes, data of them
// not zero.
func (g bombGuard) check(total, data int64) error {
	if g.kind == "" {
		return nil
	}
	if total > g.max {
		return invalidf("the %s stream decompresses to more than %d bytes: a decompression bomb or an image too big", g.kind, g.max)
	}
	in := max(g.fetched(), 1)
	if data > dataFloor && data/in >= maxDataRatio {
		return invalidf("the %s stream expands %d bytes into more than %d bytes of data (over %dx): a decompression bomb", g.kind, in, data, maxDataRatio)
	}
	if total > totalFloor && total/in >= maxTotalRatio {
		return invalidf("the %s stream expands %d bytes into more than %d bytes (over %dx): a decompression bomb", g.kind, in, total, maxTotalRatio)
	}
	return nil
}
