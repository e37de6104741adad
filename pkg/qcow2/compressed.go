package qcow2

import (
	"bytes"
	"fmt"
	"io"

	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/zstd"
)

// compressedLocation decodes a compressed cluster descriptor into the host
// byte range that holds the compressed stream.
func (img *Image) compressedLocation(e uint64) (off, n int64) {
	shift := 62 - (img.cb - 8)
	off = int64(e & (uint64(1)<<shift - 1))
	sectors := int64((e>>shift)&(uint64(1)<<(img.cb-8)-1)) + 1
	return off, sectors*512 - off%512
}

// readCompressed returns the decompressed content of a compressed cluster.
// The output is bounded by the cluster size: a stream that would inflate
// past it is an error, never a bigger allocation.
func (img *Image) readCompressed(e uint64) ([]byte, error) {
	off, n := img.compressedLocation(e)
	if off+n > maxHostOffset {
		return nil, errorf(ErrInvalid, "compressed cluster at %#x out of range", off)
	}
	src := make([]byte, n)
	if err := readFull(img.f, src, off); err != nil {
		return nil, err
	}
	out := make([]byte, img.cs)
	var r io.Reader
	switch img.hdr.CompressionType {
	case 0:
		fr := flate.NewReader(bytes.NewReader(src))
		defer fr.Close()
		r = fr
	case 1:
		var fh zstd.Header
		if err := fh.Decode(src); err == nil && fh.HasFCS && fh.FrameContentSize > uint64(img.cs) {
			return nil, fmt.Errorf("%w: compressed cluster at %#x inflates to %d bytes, more than one cluster", ErrInvalid, off, fh.FrameContentSize)
		}
		zr, err := zstd.NewReader(bytes.NewReader(src), zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(32<<20))
		if err != nil {
			return nil, err
		}
		defer zr.Close()
		r = zr
	}
	if _, err := io.ReadFull(r, out); err != nil {
		return nil, fmt.Errorf("%w: compressed cluster at %#x does not decompress to %d bytes: %v", ErrInvalid, off, img.cs, err)
	}
	if img.hdr.CompressionType == 0 {
		// A deflate stream ends with its final block; one that goes on
		// inflates past the cluster (a decompression bomb, or garbage).
		var extra [1]byte
		if n, _ := r.Read(extra[:]); n > 0 {
			return nil, fmt.Errorf("%w: compressed cluster at %#x inflates past %d bytes", ErrInvalid, off, img.cs)
		}
	}
	return out, nil
}
