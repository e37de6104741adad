package qcow2

import (
	"encoding/binary"
	"fmt"
	"syscall"
)

// run is a maximal stretch of guest bytes that maps uniformly.
type run struct {
	off, n int64
	m      mapping // m.host, when set, is the host offset of off itself
}

// walk calls fn for the runs covering [off, off+n), merging neighbours of
// the same kind (and, for data, contiguous host offsets). Callers hold mu.
func (img *Image) walk(off, n int64, fn func(r run) error) error {
	var cur run
	have := false
	for pos, end := off, off+n; pos < end; {
		vi := pos / img.cs
		in := pos % img.cs
		l := min(img.cs-in, end-pos)
		if l1i := vi / img.l2Entries; l1i >= int64(len(img.l1)) || img.l1[l1i]&l1OffsetMask == 0 {
			// No L2 table: the rest of its range is unallocated at once.
			l = min((l1i+1)*img.l2Entries*img.cs, end) - pos
		}
		m, err := img.lookup(vi)
		if err != nil {
			return err
		}
		err = img.clusterRuns(m, in, l, func(sin, sl int64, sm mapping) error {
			if have && mergeable(cur, sm) {
				cur.n += sl
				return nil
			}
			if have {
				if err := fn(cur); err != nil {
					return err
				}
			}
			cur, have = run{off: pos - in + sin, n: sl, m: sm}, true
			return nil
		})
		if err != nil {
			return err
		}
		pos += l
	}
	if have {
		return fn(cur)
	}
	return nil
}

func mergeable(cur run, next mapping) bool {
	switch {
	case cur.m.kind != next.kind:
		return false
	case next.kind == kindData || cur.m.host != 0 || next.host != 0:
		return cur.m.host != 0 && next.host != 0 && cur.m.host+cur.n == next.host && cur.m.copied == next.copied
	case next.kind == kindCompressed:
		return false
	default:
		return true
	}
}

// checkRange validates a guest range against the virtual size.
func (img *Image) checkRange(off, n int64) error {
	if img.closed {
		return ErrClosed
	}
	if off < 0 || n < 0 || off > img.size || n > img.size-off {
		return img.outOfRange(off, n)
	}
	return nil
}

// outOfRange is checkRange's error, apart so that checkRange inlines.
func (img *Image) outOfRange(off, n int64) error {
	return fmt.Errorf("%w: [%d, +%d) is outside the %d-byte image", ErrRange, off, n, img.size)
}

// ReadAt reads len(p) bytes at guest offset off.
//
// It runs between two page-cache preads, where every call, instruction
// and cache line counts (docs/benchmarks.md), so the common request, plain
// data inside one cluster with its L2 slice cached, is served here: dataHost
// and one pread of the image's descriptor. readAt handles everything else,
// and readHost whatever that one pread did not finish.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	img.mu.RLock()
	var err error
	host, ok := img.dataHost(off, int64(len(p)))
	switch {
	case !ok:
		err = img.readAt(p, off)
	case img.fd >= 0:
		// One pread is the whole request nearly always (package
		// syscall: see readHost).
		if n, perr := syscall.Pread(img.fd, p, host); perr != nil || n != len(p) {
			err = img.readHost(p, host)
		}
	default:
		err = img.readHost(p, host)
	}
	img.mu.RUnlock()
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// dataHost returns the host offset of guest offset off if [off, off+n)
// is the common request: inside the image and inside one cluster whose
// L2 entry is cached and maps plain data (not compressed, no zero flag, no
// subclusters). It answers false for everything else, malformed entries
// included, which lookup and decodeL2 then classify and report in full.
func (img *Image) dataHost(off, n int64) (int64, bool) {
	w := img.dataWord(off, n)
	return int64(w&^mirrorCopied) + off&(img.cs-1), w != 0
}

// dataWord is dataHost's lookup: the cluster's host offset, with
// mirrorCopied set if the entry has OFLAG_COPIED (the cluster may be
// written in place), or 0 when the request is not the common one.
func (img *Image) dataWord(off, n int64) uint64 {
	vi, ok := img.oneCluster(off, n)
	if !ok {
		return 0
	}
	if w := img.mirrored(vi); w != 0 {
		return w
	}
	e, ok := img.cachedL2Entry(vi)
	if !ok {
		return 0
	}
	host := int64(e & l2OffsetMask)
	if e&(oflagCompressed|oflagZero) != 0 || host == 0 || host&(img.cs-1) != 0 {
		return 0
	}
	w := uint64(host)
	if e&oflagCopied != 0 {
		w |= mirrorCopied
	}
	img.learnMirror(vi, w)
	return w
}

// oneCluster returns the guest cluster of [off, off+n) if the range is
// inside the open image, not empty, and inside that one cluster of a
// plain (not extended L2) image: the only requests the fast paths
// (dataWord, ReadAtNoWait) serve.
func (img *Image) oneCluster(off, n int64) (int64, bool) {
	vi := off >> img.cb
	if img.closed || img.ext || off < 0 || n <= 0 || off > img.size-n || (off+n-1)>>img.cb != vi {
		return 0, false
	}
	return vi, true
}

// cachedL2Entry is guest cluster vi's L2 entry as far as memory tells
// without reading the image: 0 for an empty L1 entry (no L2 table), the
// entry of a cached L2 slice, or !ok for an L1 entry with flags but no
// table, a misaligned table, or a slice not in the cache.
func (img *Image) cachedL2Entry(vi int64) (uint64, bool) {
	l1i := vi >> img.l2Bits
	if l1i >= int64(len(img.l1)) {
		return 0, false
	}
	l1e := img.l1[l1i]
	l2off := int64(l1e & l1OffsetMask)
	if l2off == 0 {
		return 0, l1e == 0
	}
	if l2off&(img.cs-1) != 0 {
		return 0, false
	}
	buf := img.l2c.cached(img.sliceKey(l2off, vi))
	if buf == nil {
		return 0, false
	}
	return binary.BigEndian.Uint64(buf[(vi&(img.sliceEntries-1))*8:]), true
}

// readAt is ReadAt under mu for any request: range and closed checks,
// requests spanning clusters, every cluster kind, L2 cache misses, errors.
func (img *Image) readAt(p []byte, off int64) error {
	if err := img.checkRange(off, int64(len(p))); err != nil {
		return err
	}
	if len(p) == 0 || off>>img.cb != (off+int64(len(p))-1)>>img.cb {
		return img.walk(off, int64(len(p)), func(r run) error {
			return img.readRun(p[r.off-off:r.off-off+r.n], r)
		})
	}
	m, err := img.lookup(off >> img.cb)
	if err != nil {
		return err
	}
	if m.kind == kindData {
		return img.readHost(p, m.host+off&(img.cs-1))
	}
	return img.readCluster(p, off, m)
}

func (img *Image) readRun(dst []byte, r run) error {
	switch r.m.kind {
	case kindData:
		return img.readHost(dst, r.m.host)
	case kindZero:
		clear(dst)
		return nil
	case kindCompressed:
		buf, err := img.readCompressed(r.m.raw)
		if err != nil {
			return err
		}
		copy(dst, buf[r.off%img.cs:])
		return nil
	default:
		return readDisk(img.backing, dst, r.off)
	}
}
