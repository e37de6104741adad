package qcow2

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
)

// A rewrite of the header area (backing file name and format, version)
// must never be torn into a header that is neither the old one nor the new
// one: a disk persists a write one 512-byte sector at a time, so a single
// write of the whole cluster 0 can leave, say, the new backing_file_offset
// pointing at bytes where the new name never landed. rewriteHeaderLocked
// therefore splits every rewrite into
//
//  1. writes of the bytes the new header uses that the current header does
//     not reference (the new backing file name is placed where nothing
//     live is, an extension tail past the current end of extensions),
//     then a sync: the current header still reads exactly as before;
//  2. one write, inside one sector, of every byte the current header
//     references that changes (the switch), then a sync.
//
// When the changed live bytes span more than one sector (extensions that
// grow or shrink while the extension area already runs past sector 0),
// the header is first rewritten, the same way, to a compact form of the
// current one without the feature name table (informational only), which
// ends inside sector 0; the new header is then reached from that form.
// Every crash state therefore opens with the old header, the compact old
// header, or the new header.

// headerRange is a byte range [off, end) of cluster 0.
type headerRange struct{ off, end int64 }

// headerLayout is cluster 0 as a header lays it out: its bytes and the
// ranges of them the header references.
type headerLayout struct {
	buf  []byte
	live []headerRange
}

func (l *headerLayout) isLive(off int64) bool {
	for _, r := range l.live {
		if off >= r.off && off < r.end {
			return true
		}
	}
	return false
}

// currentLayout reads cluster 0 and the ranges its header references.
func currentLayout(f File, h *Header) (*headerLayout, error) {
	buf := make([]byte, h.clusterSize())
	if err := readFull(f, buf, 0); err != nil {
		return nil, err
	}
	end, err := extensionsEnd(buf, headerLen(h))
	if err != nil {
		return nil, err
	}
	l := &headerLayout{buf: buf, live: []headerRange{{0, end}}}
	if h.BackingFileOffset != 0 {
		off := int64(h.BackingFileOffset)
		l.live = append(l.live, headerRange{off, off + int64(h.BackingFileSize)})
	}
	return l, nil
}

// newLayout lays h out over the bytes of base: the header and extensions
// from offset 0 (without the feature name table if dropNames), and the
// backing file name where base already holds it (keep, the name range of
// base's header) if that lies past them and overlaps nothing else in
// avoid, else at the first 8-aligned offset past them that overlaps none
// of avoid. Bytes h does not reference keep base's content.
func newLayout(h *Header, base []byte, dropNames bool, avoid []headerRange, keep headerRange) (*headerLayout, error) {
	enc, err := h.encode()
	if err != nil {
		return nil, err
	}
	hl := headerLen(h)
	if dropNames {
		if enc, err = withoutExtension(enc, hl, extFeatureNames); err != nil {
			return nil, err
		}
	}
	end, err := extensionsEnd(enc, hl)
	if err != nil {
		return nil, err
	}
	buf := bytes.Clone(base)
	copy(buf[:end], enc)
	l := &headerLayout{buf: buf, live: []headerRange{{0, end}}}
	if name := h.BackingFile; name != "" {
		used := slices.Concat(avoid, []headerRange{{0, end}})
		at, ok := keep.off, keep.off >= end && bytes.Equal(base[keep.off:keep.end], []byte(name)) && !overlaps(keep, used)
		if !ok {
			at, ok = freeRange(end, int64(len(name)), int64(len(buf)), used)
		}
		if !ok {
			return nil, fmt.Errorf("%w: no room in cluster 0 for the backing file name beside the current header, so it cannot be rewritten crash-safely", ErrUnsupported)
		}
		copy(buf[at:], name)
		binary.BigEndian.PutUint64(buf[8:], uint64(at))
		l.live = append(l.live, headerRange{at, at + int64(len(name))})
	}
	return l, nil
}

// nameRange is the range of the backing file name l references, empty if
// none.
func (l *headerLayout) nameRange() headerRange {
	if len(l.live) < 2 {
		return headerRange{}
	}
	return l.live[1]
}

// overlaps reports whether r overlaps a range of used other than r itself.
func overlaps(r headerRange, used []headerRange) bool {
	for _, u := range used {
		if u != r && r.off < u.end && u.off < r.end {
			return true
		}
	}
	return false
}

// freeRange returns the first 8-aligned offset at or past from where n
// bytes fit below limit without overlapping any of used.
func freeRange(from, n, limit int64, used []headerRange) (int64, bool) {
	at := (from + 7) &^ 7
	for at+n <= limit {
		moved := false
		for _, r := range used {
			if at < r.end && r.off < at+n {
				at, moved = (r.end+7)&^7, true
			}
		}
		if !moved {
			return at, true
		}
	}
	return 0, false
}

// headerSwitch is the plan that turns cluster 0 from one layout into
// another: pre writes only bytes the old layout does not reference, then
// one write inside one sector switches the live bytes.
type headerSwitch struct {
	pre []hostWrite
	sw  hostWrite // len(sw.buf) == 0: no live byte changes
}

// planSwitch returns the plan from old to to, or false if the live bytes
// that change do not all lie in one sector. Each run of bytes old does not
// reference is written in one piece, from its first changed byte to its
// last (rewriting equal bytes there is harmless).
func planSwitch(old, to *headerLayout) (headerSwitch, bool) {
	var p headerSwitch
	first, last := int64(-1), int64(-1)
	n := int64(len(to.buf))
	for off := int64(0); off < n; {
		live := old.isLive(off)
		lo, hi := int64(-1), int64(-1)
		for ; off < n && old.isLive(off) == live; off++ {
			if to.buf[off] != old.buf[off] {
				if lo < 0 {
					lo = off
				}
				hi = off
			}
		}
		switch {
		case lo < 0:
		case !live:
			p.pre = append(p.pre, hostWrite{lo, to.buf[lo : hi+1]})
		default:
			if first < 0 {
				first = lo
			}
			last = hi
		}
	}
	if first >= 0 {
		if first/sectorSize != last/sectorSize {
			return p, false
		}
		p.sw = hostWrite{first, to.buf[first : last+1]}
	}
	return p, true
}

// rewriteHeaderLocked rewrites the header on disk as edit changes it,
// crash-safely (see the top of this file), and returns the new header as
// read back. It changes nothing if the rewrite cannot be made safe. The
// caller holds mu exclusively and has made durable everything the new
// header relies on.
func (img *Image) rewriteHeaderLocked(edit func(h *Header)) (*Header, error) {
	steps, err := planHeaderRewrite(img.f, edit)
	if err != nil {
		return nil, err
	}
	if err := img.checkMetaWrite(0, metaHeader); err != nil {
		return nil, err
	}
	return applyHeaderSteps(img.f, steps)
}

// rewriteHeaderFile is rewriteHeaderLocked on a file no Image holds yet
// (during open).
func rewriteHeaderFile(f File, edit func(h *Header)) (*Header, error) {
	steps, err := planHeaderRewrite(f, edit)
	if err != nil {
		return nil, err
	}
	return applyHeaderSteps(f, steps)
}

// planHeaderRewrite reads the header in f and plans the steps to the
// header edit makes of it; it writes nothing.
func planHeaderRewrite(f File, edit func(h *Header)) ([]headerSwitch, error) {
	h, err := readHeader(f)
	if err != nil {
		return nil, err
	}
	old, err := currentLayout(f, h)
	if err != nil {
		return nil, err
	}
	nh := *h
	edit(&nh)
	return headerSteps(h, &nh, old)
}

// applyHeaderSteps carries out the steps and returns the header as read
// back.
func applyHeaderSteps(f File, steps []headerSwitch) (*Header, error) {
	for _, s := range steps {
		if err := applySwitch(f, s); err != nil {
			return nil, err
		}
	}
	return readHeader(f)
}

// rewriteHeader writes h (read from the file and changed by the caller) as
// the header, crash-safely, and takes over the layout fields it ends up
// with. The caller holds mu exclusively.
func (img *Image) rewriteHeader(h *Header) error {
	nh, err := img.rewriteHeaderLocked(func(cur *Header) { *cur = *h })
	if err != nil {
		return err
	}
	img.hdr.BackingFileOffset, img.hdr.BackingFileSize = nh.BackingFileOffset, nh.BackingFileSize
	img.hdr.HeaderLength = nh.HeaderLength
	return nil
}

// headerSteps plans old -> nh directly if one sector switches it, else by
// way of the compact form of the old header.
func headerSteps(h, nh *Header, old *headerLayout) ([]headerSwitch, error) {
	target, err := newLayout(nh, old.buf, false, old.live, old.nameRange())
	if err != nil {
		return nil, err
	}
	if p, ok := planSwitch(old, target); ok {
		return []headerSwitch{p}, nil
	}
	// The compact form keeps its name clear of the new extension area so
	// that the second switch touches sector 0 only.
	oh := *h
	compact, err := newLayout(&oh, old.buf, true, slices.Concat(old.live, target.live[:1]), old.nameRange())
	if err != nil {
		return nil, err
	}
	p1, ok := planSwitch(old, compact)
	if !ok {
		return nil, fmt.Errorf("%w: the header extensions do not fit in one sector without the feature name table, so the header cannot be rewritten crash-safely", ErrUnsupported)
	}
	for _, drop := range []bool{false, true} {
		target, err := newLayout(nh, compact.buf, drop, compact.live, compact.nameRange())
		if err != nil {
			return nil, err
		}
		if p2, ok := planSwitch(compact, target); ok {
			return []headerSwitch{p1, p2}, nil
		}
	}
	return nil, fmt.Errorf("%w: the new header extensions do not fit in one sector, so the header cannot be rewritten crash-safely", ErrUnsupported)
}

// applySwitch writes and syncs the unreferenced bytes, then writes and
// syncs the switch.
func applySwitch(f File, s headerSwitch) error {
	for _, w := range s.pre {
		if _, err := f.WriteAt(w.buf, w.off); err != nil {
			return err
		}
	}
	if len(s.pre) > 0 {
		if err := f.Sync(); err != nil {
			return err
		}
	}
	if len(s.sw.buf) == 0 {
		return nil
	}
	return writeDurable(f, s.sw.buf, s.sw.off)
}
