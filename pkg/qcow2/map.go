package qcow2

// Map describes how [off, off+n) of the guest is stored, through the whole
// backing chain, as `qemu-img map` reports it.
func (img *Image) Map(off, n int64) ([]Extent, error) {
	img.mu.RLock()
	defer img.mu.RUnlock()
	if err := img.checkRange(off, n); err != nil {
		return nil, err
	}
	var out []Extent
	err := img.walk(off, n, func(r run) error {
		switch r.m.kind {
		case kindData:
			out = appendExtent(out, Extent{Start: r.off, Length: r.n, Data: true, Present: true, Offset: r.m.host, File: img.name})
		case kindCompressed:
			out = appendExtent(out, Extent{Start: r.off, Length: r.n, Data: true, Present: true, Compressed: true, Offset: -1, File: img.name})
		case kindZero:
			off := int64(-1)
			if r.m.host != 0 { // a zero cluster that keeps its host cluster
				off = r.m.host
			}
			out = appendExtent(out, Extent{Start: r.off, Length: r.n, Zero: true, Present: true, Offset: off})
		default:
			below, err := img.mapBacking(r.off, r.n)
			if err != nil {
				return err
			}
			for _, e := range below {
				out = appendExtent(out, e)
			}
		}
		return nil
	})
	return out, err
}

// mapBacking maps an unallocated range through the backing chain; depths
// are counted from this image.
func (img *Image) mapBacking(off, n int64) ([]Extent, error) {
	if img.backing == nil {
		return []Extent{{Start: off, Length: n, Zero: true, Offset: -1}}, nil
	}
	bsize := img.backing.Size()
	var below []Extent
	if off < bsize {
		l := min(n, bsize-off)
		ext, err := img.backing.Map(off, l)
		if err != nil {
			return nil, err
		}
		below = ext
	}
	for i := range below {
		below[i].Depth++
	}
	if off+n > bsize {
		s := max(off, bsize)
		// Past the end of the backing file this image decides: zeros.
		below = append(below, Extent{Start: s, Length: off + n - s, Zero: true, Offset: -1})
	}
	return below, nil
}

// appendExtent appends e, merging it into the last extent when they are
// contiguous and alike.
func appendExtent(out []Extent, e Extent) []Extent {
	if e.Length <= 0 {
		return out
	}
	if n := len(out); n > 0 {
		l := &out[n-1]
		same := l.Data == e.Data && l.Zero == e.Zero && l.Present == e.Present && l.Depth == e.Depth &&
			l.Compressed == e.Compressed && l.File == e.File && l.Start+l.Length == e.Start
		offOK := (l.Offset < 0 && e.Offset < 0) || (l.Offset >= 0 && l.Offset+l.Length == e.Offset)
		if same && offOK && !e.Compressed {
			l.Length += e.Length
			return out
		}
	}
	return append(out, e)
}
