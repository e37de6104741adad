package qcow2

import (
	"bytes"
	"fmt"
	"runtime"
	"slices"
	"sync"

	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/zstd"
)

// CompressedCluster is one guest cluster for WriteCompressedClusters.
type CompressedCluster struct {
	// Off is the guest offset, cluster aligned.
	Off int64
	// Data is one cluster of guest data. It is shorter only for the last
	// cluster of an image whose size is not cluster aligned (it then ends
	// at or before the end of the image, and is padded with zeros, as QEMU
	// does).
	Data []byte
}

// compressPack is where the next compressed stream goes: QEMU packs
// streams back to back (byte granular) into host clusters. It is derived
// state: losing it wastes the rest of one cluster, nothing more.
type compressPack struct {
	pos   int64  // host byte offset of the next free byte; 0: none
	vi    int64  // guest cluster of the last stream, which ends at pos
	entry uint64 // its L2 entry: while unchanged, pos's cluster is still in use
}

// WriteCompressed writes one guest cluster compressed (qemu-io write -c).
// The cluster must be unallocated or zero in this image, as QEMU requires.
// Each call syncs once; convert many clusters with WriteCompressedClusters.
func (img *Image) WriteCompressed(p []byte, off int64) error {
	return img.WriteCompressedClusters([]CompressedCluster{{Off: off, Data: p}})
}

// WriteCompressedClusters writes whole guest clusters compressed with the
// image's compression type: CompressClusters, then WriteCompressedBatch.
func (img *Image) WriteCompressedClusters(cl []CompressedCluster) error {
	b, err := img.CompressClusters(cl)
	if err != nil {
		return err
	}
	return img.WriteCompressedBatch(b)
}

// CompressedBatch is guest clusters compressed for one image, ready for
// WriteCompressedBatch. Compressing takes no lock, so several goroutines
// can compress batches in parallel while another one writes.
type CompressedBatch struct {
	img     *Image
	ctype   uint8
	cl      []CompressedCluster
	streams [][]byte // nil: the cluster does not compress
	bytes   int64    // guest bytes
}

// Len returns the number of guest bytes the batch carries.
func (b *CompressedBatch) Len() int64 { return b.bytes }

// Append moves the clusters of o into b; both must come from the same
// image. o must not be used afterwards.
func (b *CompressedBatch) Append(o *CompressedBatch) error {
	if o.img != b.img || o.ctype != b.ctype {
		return errorf(ErrInvalid, "compressed batches of different images or compression types")
	}
	b.cl = append(b.cl, o.cl...)
	b.streams = append(b.streams, o.streams...)
	b.bytes += o.bytes
	*o = CompressedBatch{img: o.img, ctype: o.ctype}
	return nil
}

// CompressClusters compresses whole guest clusters (zlib: raw deflate,
// 4 KiB window; zstd: one frame) for WriteCompressedBatch. A cluster whose
// stream would not be smaller than a cluster will be written uncompressed.
// The batch keeps the Data slices: they must not change until it is
// written.
func (img *Image) CompressClusters(cl []CompressedCluster) (*CompressedBatch, error) {
	img.mu.RLock()
	err := img.checkCompressedShapes(cl)
	ctype := img.hdr.CompressionType
	img.mu.RUnlock()
	if err != nil {
		return nil, err
	}
	streams, err := compressClusters(cl, img.cs, ctype)
	if err != nil {
		return nil, err
	}
	b := &CompressedBatch{img: img, ctype: ctype, cl: cl, streams: streams}
	for _, c := range cl {
		b.bytes += int64(len(c.Data))
	}
	return b, nil
}

// WriteCompressedBatch writes a batch from CompressClusters. Every target
// cluster must currently be unallocated or zero in this image.
//
// Crash safety: the streams are packed into clusters from the reservation
// pool (refcount 1, durable, reading zeros) or into the free tail of the
// previous packing cluster; every stream adds one reference to each host
// cluster it touches. All stream data and refcount increments are written,
// then synced once, and only then are the L2 entries written. So a crash
// leaves at worst leaked clusters, and an L2 entry never points at a
// stream that is not durable.
func (img *Image) WriteCompressedBatch(b *CompressedBatch) error {
	if err := img.prepareWrite(); err != nil {
		return err
	}
	if b.img != img {
		return errorf(ErrInvalid, "compressed batch was made for another image")
	}
	cl, streams := b.cl, b.streams
	if len(cl) == 0 {
		return nil
	}
	img.lockQuiesced()
	defer img.mu.Unlock()
	if err := img.writable(); err != nil {
		return err
	}
	if err := img.checkCompressedShapes(cl); err != nil { // resized meanwhile?
		return err
	}
	if b.ctype != img.hdr.CompressionType {
		return errorf(ErrInvalid, "compressed batch: the image's compression type changed")
	}
	for _, c := range cl {
		img.markBitmaps(c.Off, img.cs)
	}
	if err := img.markDirty(); err != nil {
		return err
	}
	// Refuse before changing anything: QEMU compresses only into clusters
	// that hold nothing in this image.
	olds := make([]mapping, len(cl))
	for i, c := range cl {
		m, err := img.lookup(c.Off / img.cs)
		if err != nil {
			return err
		}
		if m.kind != kindUnallocated && m.kind != kindZero {
			return errorf(ErrInvalid, "compressed write at %d: the cluster is already allocated (compressed writes need an unallocated or zero cluster)", c.Off)
		}
		olds[i] = m
	}
	var need int64
	for _, s := range streams {
		if s != nil {
			need += int64(len(s))
		} else {
			need += img.cs
		}
	}
	if err := img.ensureReserved(ceilDiv(need, img.cs) + int64(len(cl))/img.l2Entries + 2); err != nil {
		return err
	}

	// Streams that do not compress go through the normal write path.
	for i, c := range cl {
		if streams[i] == nil {
			if err := img.writeLocked(c.Data, c.Off); err != nil {
				return err
			}
		}
	}

	pk := packer{img: img, counts: map[int64]uint64{}, disk: map[int64]uint64{}, maxRef: refcountMax(img.refOrder)}
	if st := img.cpack; st.pos != 0 {
		// Continue the last packing cluster only while the stream that
		// ends there is still linked: then the cluster cannot have been
		// freed and reused meanwhile.
		if m, err := img.lookup(st.vi); err == nil && m.raw == st.entry && m.kind == kindCompressed {
			pk.pos = st.pos
		}
	}
	img.cpack = compressPack{}

	var w writeBatch
	w.needSync = true
	lastVI, lastEntry := int64(-1), uint64(0)
	for i, c := range cl {
		s := streams[i]
		if s == nil {
			continue
		}
		vi := c.Off / img.cs
		if _, err := img.prepareL2(vi / img.l2Entries); err != nil {
			return err
		}
		host, err := pk.place(int64(len(s)))
		if err != nil {
			return err
		}
		if err := img.checkDataRange(host, int64(len(s))); err != nil {
			return err
		}
		entry, err := img.compressedEntry(host, int64(len(s)))
		if err != nil {
			return err
		}
		w.data = append(w.data, hostWrite{host, s})
		w.l2 = append(w.l2, l2Update{vi, entry, 0})
		img.unlink(&w, olds[i], false)
		lastVI, lastEntry = vi, entry
	}
	if len(w.l2) == 0 {
		return nil
	}
	// Refcount increments of clusters shared by several streams; fresh
	// clusters keep the 1 the pool gave them.
	clusters := make([]int64, 0, len(pk.counts))
	for c := range pk.counts {
		clusters = append(clusters, c)
	}
	slices.Sort(clusters)
	for _, c := range clusters {
		if v := pk.counts[c]; v != pk.disk[c] {
			if err := img.setRefcountLive(c, v); err != nil {
				return err
			}
		}
	}
	// Data and refcounts, one sync, then the L2 entries (commit).
	if err := img.commit(&w); err != nil {
		return err
	}
	if pk.pos != 0 {
		img.cpack = compressPack{pos: pk.pos, vi: lastVI, entry: lastEntry}
	}
	return nil
}

// checkCompressedShapes validates offsets and lengths. Callers hold mu.
func (img *Image) checkCompressedShapes(cl []CompressedCluster) error {
	seen := make(map[int64]bool, len(cl))
	for _, c := range cl {
		n := int64(len(c.Data))
		if err := img.checkRange(c.Off, n); err != nil {
			return err
		}
		switch {
		case c.Off%img.cs != 0:
			return errorf(ErrInvalid, "compressed write at %d: offset is not cluster aligned", c.Off)
		case n != img.cs && !(n > 0 && n < img.cs && c.Off+img.cs >= img.size && c.Off+n <= img.size):
			return errorf(ErrInvalid, "compressed write at %d: %d bytes, a compressed write covers one whole %d-byte cluster", c.Off, n, img.cs)
		case seen[c.Off]:
			return errorf(ErrInvalid, "compressed write at %d: the cluster appears twice in one batch", c.Off)
		}
		seen[c.Off] = true
	}
	return nil
}

// compressedEntry encodes the L2 descriptor of a stream of n bytes at host.
func (img *Image) compressedEntry(host, n int64) (uint64, error) {
	shift := 62 - (img.cb - 8)
	if uint64(host+n) >= uint64(1)<<shift {
		return 0, errorf(ErrRange, "compressed cluster at host offset %#x is beyond what a descriptor can address", host)
	}
	extra := uint64((host+n-1)/512 - host/512)
	if extra >= uint64(1)<<(img.cb-8) {
		return 0, errorf(ErrInvalid, "compressed stream of %d bytes is too long", n)
	}
	return oflagCompressed | extra<<shift | uint64(host), nil
}

// packer places streams into host clusters.
type packer struct {
	img    *Image
	pos    int64            // next free byte, 0: start a new cluster
	counts map[int64]uint64 // host cluster -> refcount after this batch
	disk   map[int64]uint64 // host cluster -> refcount on disk before it
	maxRef uint64
}

// count returns the refcount cluster c will have, reading it on first use.
func (p *packer) count(c int64) (uint64, error) {
	if v, ok := p.counts[c]; ok {
		return v, nil
	}
	v, err := p.img.refcount(c)
	if err != nil {
		return 0, err
	}
	p.counts[c], p.disk[c] = v, v
	return v, nil
}

// place returns the host offset for a stream of n (< cluster size) bytes.
func (p *packer) place(n int64) (int64, error) {
	cs := p.img.cs
	cur := int64(-1)
	if p.pos != 0 {
		cur = p.pos / cs
		v, err := p.count(cur)
		if err != nil {
			return 0, err
		}
		if v == 0 || v >= p.maxRef {
			cur, p.pos = -1, 0 // not ours any more, or no room in its refcount
		}
	}
	if cur >= 0 && p.pos%cs+n <= cs {
		start := p.pos
		p.counts[cur]++
		p.advance(start + n)
		return start, nil
	}
	c, err := p.img.takeCluster()
	if err != nil {
		return 0, err
	}
	// A pool cluster has refcount 1 on disk, which its first stream uses.
	p.counts[c], p.disk[c] = 1, 1
	start := c * cs
	if cur >= 0 && c == cur+1 {
		// Contiguous: the stream starts in the current cluster's tail.
		start = p.pos
		p.counts[cur]++
	}
	p.advance(start + n)
	return start, nil
}

func (p *packer) advance(end int64) {
	p.pos = end
	if end%p.img.cs == 0 {
		p.pos = 0
	}
}

// compressClusters compresses each cluster (padded to the cluster size);
// a nil stream means it did not compress to less than a cluster. It runs
// on all CPUs: compression dominates the cost of a compressed convert.
func compressClusters(cl []CompressedCluster, cs int64, ctype uint8) ([][]byte, error) {
	out := make([][]byte, len(cl))
	errs := make([]error, len(cl))
	workers := min(runtime.GOMAXPROCS(0), len(cl))
	var wg sync.WaitGroup
	next := make(chan int)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var padded []byte
			for i := range next {
				src := cl[i].Data
				if int64(len(src)) < cs {
					if padded == nil {
						padded = make([]byte, cs)
					}
					clear(padded)
					copy(padded, src)
					src = padded
				}
				out[i], errs[i] = compressCluster(src, ctype)
			}
		}()
	}
	for i := range cl {
		next <- i
	}
	close(next)
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// deflateWindow is QEMU's: it deflates with windowBits -12 and inflates
// with the same, so distances must stay within 4 KiB.
const deflateWindow = 4096

var (
	flatePool = sync.Pool{New: func() any {
		w, err := flate.NewWriterWindow(nil, deflateWindow)
		if err != nil {
			panic(err)
		}
		return w
	}}
	// The windowed writer codes literals with fixed Huffman tables, which
	// cannot shrink high-entropy text; Huffman-only deflate uses no
	// distances at all (valid for any window) and dynamic tables.
	huffPool = sync.Pool{New: func() any {
		w, err := flate.NewWriter(nil, flate.HuffmanOnly)
		if err != nil {
			panic(err)
		}
		return w
	}}
	zstdOnce sync.Once
	zstdEnc  *zstd.Encoder
	zstdErr  error
)

// deflateWith compresses src with a pooled deflate writer.
func deflateWith(pool *sync.Pool, src []byte) ([]byte, error) {
	var buf bytes.Buffer
	buf.Grow(len(src) / 2)
	fw := pool.Get().(*flate.Writer)
	defer pool.Put(fw)
	fw.Reset(&buf)
	if _, err := fw.Write(src); err != nil {
		return nil, err
	}
	if err := fw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// compressCluster returns the compressed stream of src, or nil if it is
// not smaller than len(src)-1 bytes (QEMU's bound: the output buffer has
// cluster_size - 1 bytes).
func compressCluster(src []byte, ctype uint8) ([]byte, error) {
	limit := len(src) - 1
	switch ctype {
	case 0:
		best, err := deflateWith(&flatePool, src)
		if err != nil {
			return nil, err
		}
		if len(best) > len(src)*7/8 {
			huff, err := deflateWith(&huffPool, src)
			if err != nil {
				return nil, err
			}
			if len(huff) < len(best) {
				best = huff
			}
		}
		if len(best) > limit {
			return nil, nil
		}
		return best, nil
	case 1:
		// One frame with the content size and no checksum, as QEMU's
		// ZSTD_compressStream2(..., ZSTD_e_end) writes it.
		zstdOnce.Do(func() {
			zstdEnc, zstdErr = zstd.NewWriter(nil, zstd.WithEncoderCRC(false), zstd.WithEncoderConcurrency(1),
				zstd.WithSingleSegment(true))
		})
		if zstdErr != nil {
			return nil, zstdErr
		}
		s := zstdEnc.EncodeAll(src, make([]byte, 0, len(src)/2))
		if len(s) > limit {
			return nil, nil
		}
		return s, nil
	}
	return nil, fmt.Errorf("%w: compression type %d", ErrUnsupported, ctype)
}
