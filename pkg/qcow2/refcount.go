package qcow2

import (
	"errors"
	"fmt"
)

// errTableFull: a refcount block is needed beyond the refcount table.
var errTableFull = errors.New("refcount table full")

// refBlock returns the cached refcount block with index bi from table rt,
// or nil if the table has no block there.
func (img *Image) refBlock(rt []uint64, bi int64) ([]byte, int64, error) {
	if bi >= int64(len(rt)) {
		return nil, 0, nil
	}
	off := int64(rt[bi] & refTableOffMask)
	if off == 0 {
		return nil, 0, nil
	}
	if off%img.cs != 0 || off > maxHostOffset {
		return nil, 0, img.corruption("refcount block %d at unaligned offset %#x", bi, off)
	}
	buf, err := img.rbc.get(off, uint64(bi), func(b []byte) error { return readFull(img.f, b, off) })
	return buf, off, err
}

// refcount returns the stored refcount of cluster c.
func (img *Image) refcount(c int64) (uint64, error) {
	blk, _, err := img.refBlock(img.rt, c/img.refPerBlk)
	if err != nil || blk == nil {
		return 0, err
	}
	return getRefcount(blk, uint64(c%img.refPerBlk), img.refOrder), nil
}

// setRefcountLive writes the refcount of cluster c through to its block.
func (img *Image) setRefcountLive(c int64, v uint64) error {
	return img.setRefcountRange(img.rt, c, 1, v)
}

// setRefcountRange sets the refcounts of clusters [start, start+n) to v
// with one write per refcount block; the blocks must exist.
func (img *Image) setRefcountRange(rt []uint64, start, n int64, v uint64) error {
	if v > refcountMax(img.refOrder) {
		return fmt.Errorf("%w: refcount %d exceeds %d-bit refcounts", ErrUnsupported, v, 1<<img.refOrder)
	}
	return img.refcountSpans(rt, start, n, func(s refcountSpan) error {
		if err := img.checkMetaWrite(s.off, metaRefBlock); err != nil {
			return err
		}
		for i := s.lo; i < s.hi; i++ {
			setRefcount(s.blk, uint64(i), img.refOrder, v)
		}
		if _, err := img.f.WriteAt(s.bytes(), s.off+s.from); err != nil {
			img.rbc.drop(s.off, img.cs)
			return err
		}
		return nil
	})
}

// refcountSpan is the part of one refcount block that covers a cluster
// range: entries [lo, hi), stored in bytes [from, to) of blk, at host
// offset off.
type refcountSpan struct {
	blk      []byte
	off      int64
	lo, hi   int64
	from, to int64
}

func (s refcountSpan) bytes() []byte { return s.blk[s.from:s.to] }

// refcountSpans calls fn for each refcount block covering clusters
// [start, start+n) in table rt; a missing block is errTableFull.
func (img *Image) refcountSpans(rt []uint64, start, n int64, fn func(refcountSpan) error) error {
	width := int64(1) << img.refOrder
	for c := start; c < start+n; {
		bi := c / img.refPerBlk
		stop := min(start+n, (bi+1)*img.refPerBlk)
		blk, off, err := img.refBlock(rt, bi)
		if err != nil {
			return err
		}
		if blk == nil {
			return errTableFull
		}
		lo, hi := c-bi*img.refPerBlk, stop-bi*img.refPerBlk
		if err := fn(refcountSpan{blk: blk, off: off, lo: lo, hi: hi, from: lo * width / 8, to: ceilDiv(hi*width, 8)}); err != nil {
			return err
		}
		c = stop
	}
	return nil
}

// allocRun allocates n contiguous clusters at the end of the file, sets
// their refcounts to 1 and creates the refcount blocks they need (placed
// right after the run). Blocks are registered in rt; when live, rt is the
// image's table and the new entries are written to it on disk, each after
// its block is durable. It returns errTableFull when rt is too small.
func (img *Image) allocRun(n int64, rt []uint64, live bool) (int64, error) {
	start := img.alloc.eof
	var missing []int64
	for nb := int64(0); ; {
		end := start + n + nb
		missing = missing[:0]
		for bi := start / img.refPerBlk; bi <= (end-1)/img.refPerBlk; bi++ {
			if bi >= int64(len(rt)) {
				return 0, errTableFull
			}
			if rt[bi]&refTableOffMask == 0 {
				missing = append(missing, bi)
			}
		}
		if int64(len(missing)) == nb {
			break
		}
		nb = int64(len(missing))
	}
	end := start + n + int64(len(missing))
	img.alloc.blocksCreated += len(missing)
	if end*img.cs > maxHostOffset {
		return 0, fmt.Errorf("%w: image file would exceed %d bytes", ErrRange, maxHostOffset)
	}
	// New blocks: fill in the refcounts of every run cluster they cover.
	newBlocks := make(map[int64][]byte, len(missing))
	blockAt := make(map[int64]int64, len(missing))
	for i, bi := range missing {
		blk := make([]byte, img.cs)
		for c := max(start, bi*img.refPerBlk); c < min(end, (bi+1)*img.refPerBlk); c++ {
			setRefcount(blk, uint64(c-bi*img.refPerBlk), img.refOrder, 1)
		}
		at := (start + n + int64(i)) * img.cs
		if _, err := img.f.WriteAt(blk, at); err != nil {
			return 0, err
		}
		newBlocks[bi] = blk
		blockAt[bi] = at
	}
	// Existing blocks covering part of the run (or the new blocks).
	for c := start; c < end; {
		bi := c / img.refPerBlk
		stop := min(end, (bi+1)*img.refPerBlk)
		if _, isNew := newBlocks[bi]; !isNew {
			if err := img.setRefcountRange(rt, c, stop-c, 1); err != nil {
				return 0, err
			}
		}
		c = stop
	}
	if err := img.extendFile(end); err != nil {
		return 0, err
	}
	if len(missing) > 0 {
		// A table entry must never reach the disk before its block, nor
		// before the entry of the block that counts the block's own
		// cluster: register the blocks level by level, syncing between.
		if err := img.f.Sync(); err != nil {
			return 0, err
		}
		levels, err := img.blockLevels(missing, blockAt)
		if err != nil {
			return 0, err
		}
		for i, group := range levels {
			if i > 0 && live {
				if err := img.f.Sync(); err != nil {
					return 0, err
				}
			}
			for _, bi := range group {
				at := blockAt[bi]
				if live {
					if err := img.writeU64(int64(img.hdr.RefcountTableOffset)+bi*8, uint64(at)); err != nil {
						// Blocks of earlier levels are registered
						// inside the run: it must never be handed
						// out again (its clusters leak). This block
						// is not: in memory the table would point
						// where the disk's may not.
						img.alloc.eof = end
						return 0, err
					}
				}
				rt[bi] = uint64(at)
				img.rbc.put(at, newBlocks[bi])
				img.meta.add(at/img.cs, metaRefBlock)
			}
		}
	}
	img.alloc.eof = end
	return start, nil
}

// blockLevels orders new refcount blocks so that each one's table entry
// comes after the entry of the block holding its own refcount: level 0
// blocks count themselves or are counted by existing blocks.
func (img *Image) blockLevels(missing []int64, blockAt map[int64]int64) ([][]int64, error) {
	level := make(map[int64]int, len(missing))
	var levelOf func(bi int64, depth int) (int, error)
	levelOf = func(bi int64, depth int) (int, error) {
		if l, ok := level[bi]; ok {
			return l, nil
		}
		if depth > len(missing) {
			return 0, errorf(ErrInvalid, "cyclic refcount block placement")
		}
		dep := blockAt[bi] / img.cs / img.refPerBlk
		l := 0
		if _, isNew := blockAt[dep]; isNew && dep != bi {
			d, err := levelOf(dep, depth+1)
			if err != nil {
				return 0, err
			}
			l = d + 1
		}
		level[bi] = l
		return l, nil
	}
	var out [][]int64
	for _, bi := range missing {
		l, err := levelOf(bi, 0)
		if err != nil {
			return nil, err
		}
		for len(out) <= l {
			out = append(out, nil)
		}
		out[l] = append(out[l], bi)
	}
	return out, nil
}

// extendFile makes the file at least clusters*cs long.
func (img *Image) extendFile(clusters int64) error {
	size, err := img.f.Size()
	if err != nil {
		return err
	}
	if want := clusters * img.cs; want > size {
		return img.f.Truncate(want)
	}
	return nil
}

// allocRunLive is allocRun on the live refcount table, growing the table
// when it is full.
func (img *Image) allocRunLive(n int64) (int64, error) {
	for {
		start, err := img.allocRun(n, img.rt, true)
		if !errors.Is(err, errTableFull) {
			return start, err
		}
		if err := img.growRefTable(); err != nil {
			return 0, err
		}
	}
}

// growRefTable moves the refcount table to a larger one at the end of the
// file: new blocks and the new table are made durable before the header
// points at them, and the old table is freed only after the next flush.
func (img *Image) growRefTable() error {
	perCluster := img.cs / 8
	newLen := int64(len(img.rt)) * 2
	for {
		tcl := ceilDiv(newLen, perCluster)
		// The table must cover everything up to its own blocks.
		last := img.alloc.eof + tcl + ceilDiv(tcl, img.refPerBlk) + 2
		if last/img.refPerBlk < newLen {
			break
		}
		newLen *= 2
	}
	newLen = ceilDiv(newLen, perCluster) * perCluster
	if newLen*8 > maxRefcountTableBytes {
		return fmt.Errorf("%w: the refcount table would exceed %d bytes", ErrRange, maxRefcountTableBytes)
	}
	newRT := make([]uint64, newLen)
	copy(newRT, img.rt)
	tcl := newLen / perCluster
	start, err := img.allocRun(tcl, newRT, false)
	if err != nil {
		return err
	}
	buf := make([]byte, newLen*8)
	putU64s(buf, newRT)
	if err := img.checkMetaWrite(start*img.cs, metaNone); err != nil {
		return err
	}
	if _, err := img.f.WriteAt(buf, start*img.cs); err != nil {
		return err
	}
	if err := img.f.Sync(); err != nil {
		return err
	}
	var hb [12]byte
	putU64s(hb[:8], []uint64{uint64(start * img.cs)})
	putU32(hb[8:], uint32(tcl))
	if _, err := img.f.WriteAt(hb[:], hdrOffRefcountTable); err != nil {
		return err
	}
	if err := img.f.Sync(); err != nil {
		return err
	}
	oldOff := int64(img.hdr.RefcountTableOffset) / img.cs
	oldN := int64(img.hdr.RefcountTableClusters)
	for c := oldOff; c < oldOff+oldN; c++ {
		img.alloc.freeLater(c)
	}
	for c := start; c < start+tcl; c++ {
		img.meta.add(c, metaRefTable)
	}
	img.hdr.RefcountTableOffset = uint64(start * img.cs)
	img.hdr.RefcountTableClusters = uint32(tcl)
	img.rt = newRT
	return nil
}
