package qcow2

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"

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
	if img.hdr.CompressionType == 1 {
		return img.readZstd(src, off)
	}
	out := make([]byte, img.cs)
	fr := flate.NewReader(bytes.NewReader(src))
	defer fr.Close()
	if _, err := io.ReadFull(fr, out); err != nil {
		return nil, fmt.Errorf("%w: compressed cluster at %#x does not decompress to %d bytes: %v", ErrInvalid, off, img.cs, err)
	}
	// A deflate stream ends with its final block; one that goes on
	// inflates past the cluster (a decompression bomb, or garbage).
	var extra [1]byte
	if n, _ := fr.Read(extra[:]); n > 0 {
		return nil, fmt.Errorf("%w: compressed cluster at %#x inflates past %d bytes", ErrInvalid, off, img.cs)
	}
	return out, nil
}

// zstdDecoder is shared by every image of the process: DecodeAll is safe
// for concurrent use and keeps its decoding state between calls, where a
// decoder per read cost its setup and buffers every time. Its output is
// capped by the capacity of the buffer it decodes into (one cluster), so
// a frame that claims a larger window or inflates further costs nothing.
var zstdDecoder = sync.OnceValues(func() (*zstd.Decoder, error) {
	return zstd.NewReader(nil,
		zstd.WithDecodeAllCapLimit(true),
		zstd.WithDecoderMaxMemory(1<<maxClusterBits),
		zstd.WithDecoderLowmem(true))
})

// readZstd decompresses the zstd stream src of the cluster at off. src
// runs to the end of the stream's last sector, where the next cluster's
// stream may begin: only the first frame is decoded.
func (img *Image) readZstd(src []byte, off int64) ([]byte, error) {
	n, err := zstdFrameLen(src, img.cs)
	if err != nil {
		return nil, fmt.Errorf("%w: compressed cluster at %#x: %v", ErrInvalid, off, err)
	}
	dec, err := zstdDecoder()
	if err != nil {
		return nil, err
	}
	out, err := dec.DecodeAll(src[:n], make([]byte, 0, img.cs))
	if err != nil || int64(len(out)) != img.cs {
		return nil, fmt.Errorf("%w: compressed cluster at %#x does not decompress to %d bytes (%d): %v", ErrInvalid, off, img.cs, len(out), err)
	}
	return out, nil
}

// zstdFrameLen returns the length of the zstd frame at the start of src
// (RFC 8878, 3.1.1): its header, each block's header and content up to
// the last block, and the checksum. A frame that says it inflates past
// the cluster size cs is refused before anything is decoded.
func zstdFrameLen(src []byte, cs int64) (int, error) {
	var fh zstd.Header
	if err := fh.Decode(src); err != nil {
		return 0, err
	}
	if fh.Skippable {
		return 0, errors.New("a skippable frame where the cluster's frame should be")
	}
	if fh.HasFCS && fh.FrameContentSize > uint64(cs) {
		return 0, fmt.Errorf("the frame inflates to %d bytes, more than one cluster", fh.FrameContentSize)
	}
	n := fh.HeaderSize
	for {
		if n+3 > len(src) {
			return 0, errors.New("the frame is truncated")
		}
		bh := uint32(src[n]) | uint32(src[n+1])<<8 | uint32(src[n+2])<<16
		last, kind, size := bh&1 != 0, (bh>>1)&3, int(bh>>3)
		n += 3
		switch kind {
		case 0, 2: // raw, compressed: size bytes follow
			n += size
		case 1: // RLE: one byte, repeated size times
			n++
		default:
			return 0, errors.New("a reserved block type")
		}
		if n > len(src) {
			return 0, errors.New("the frame is truncated")
		}
		if last {
			break
		}
	}
	if fh.HasCheckSum {
		n += 4
	}
	return min(n, len(src)), nil
}
