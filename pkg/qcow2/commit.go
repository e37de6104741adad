package qcow2

import (
	"fmt"
)

// Commit copies every cluster the qcow2 image at path defines (data, and
// zero clusters as zeros) into its immediate backing file, which is opened
// writable under pol, and makes it durable. A backing file smaller than the
// image is grown first. Unless drop is set, the image is then emptied: all
// its clusters are deallocated so that it reads through to the backing
// file, as qemu-img commit does; with drop it is left unchanged.
//
// Crash safety: the backing file is flushed before the image loses any
// mapping, and the image's data clusters are punched only after the
// unmapping is durable, so a crash never loses what the image held.
func Commit(path string, pol BackingPolicy, drop bool) error {
	top, err := Open(path, Options{Backing: pol, NoBacking: true, ReadOnly: drop})
	if err != nil {
		return err
	}
	defer top.Close()
	h := top.Header()
	if h.BackingFile == "" {
		return fmt.Errorf("%w: image does not have a backing file", ErrInvalid)
	}
	base, err := openBackingMode(path, h.BackingFile, h.BackingFormat, Options{Backing: pol}, 1, true)
	if err != nil {
		return fmt.Errorf("opening backing file %q: %w", h.BackingFile, err)
	}
	return commitImages(top, base, drop)
}

// commitImages commits top (opened without its chain; read-only with
// drop) into base, opened writable, and closes base, then top.
func commitImages(top *Image, base Disk, drop bool) error {
	err := commitInto(top, base)
	if cerr := base.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if !drop {
		if err := top.makeEmpty(); err != nil {
			return err
		}
	}
	return top.Close()
}

// commitInto copies what top (opened without its chain) defines into base
// and flushes base.
func commitInto(top *Image, base Disk) error {
	size := top.Size()
	if base.Size() < size {
		if err := growDisk(base, size); err != nil {
			return fmt.Errorf("growing the backing file to %d bytes: %w", size, err)
		}
	}
	exts, err := top.Map(0, size)
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for _, e := range exts {
		if !e.Present {
			continue
		}
		for off, end := e.Start, e.Start+e.Length; off < end; {
			n := min(end-off, int64(len(buf)))
			p := buf[:n]
			if e.Zero && !e.Data {
				if err := zeroDisk(base, off, n); err != nil {
					return err
				}
			} else {
				if _, err := top.ReadAt(p, off); err != nil {
					return err
				}
				if _, err := base.WriteAt(p, off); err != nil {
					return err
				}
			}
			off += n
		}
	}
	return base.Flush()
}

// growDisk grows a qcow2 image or raw file to size bytes.
func growDisk(d Disk, size int64) error {
	switch d := d.(type) {
	case *Image:
		return d.Resize(ceilDiv(size, 512) * 512)
	case *Raw:
		if d.readOnly {
			return ErrReadOnly
		}
		if err := d.f.Truncate(size); err != nil {
			return err
		}
		d.size = size
		return nil
	}
	return fmt.Errorf("%w: cannot grow %T", ErrUnsupported, d)
}

// zeroDisk makes [off, off+n) of d read as zeros.
func zeroDisk(d Disk, off, n int64) error {
	if img, ok := d.(*Image); ok {
		return img.WriteZeroes(off, n, true)
	}
	return writeZeros(d, off, n)
}

// makeEmpty deallocates every cluster of the active layer (L2 entries
// become 0, so reads fall through to the backing file). The unmapping is
// made durable before the freed data clusters are punched, and their
// refcounts drop at the next flush.
func (img *Image) makeEmpty() error {
	if err := img.writable(); err != nil {
		return err
	}
	img.lockQuiesced()
	defer img.mu.Unlock()
	if err := img.writable(); err != nil {
		return err
	}
	nclusters := ceilDiv(img.size, img.cs)
	var punch []clusterRun
	dirty := false
	for l1i := int64(0); l1i < int64(len(img.l1)); l1i++ {
		l2off, err := img.l2Offset(l1i)
		if err != nil {
			return err
		}
		if l2off == 0 {
			continue
		}
		var w writeBatch
		first := l1i * img.l2Entries
		for vi := first; vi < min(first+img.l2Entries, nclusters); vi++ {
			m, err := img.lookup(vi)
			if err != nil {
				return err
			}
			if m.kind == kindUnallocated {
				continue
			}
			w.l2 = append(w.l2, l2Update{vi, 0, 0})
			img.unlink(&w, m, false)
			if (m.kind == kindData || m.kind == kindSub) && m.copied && m.host != 0 {
				punch = append(punch, clusterRun{m.host / img.cs, 1})
			}
		}
		if len(w.l2) == 0 {
			continue
		}
		if !dirty {
			if err := img.markDirty(); err != nil {
				return err
			}
			dirty = true
		}
		// A table shared with a snapshot is copied first (one cluster).
		if err := img.ensureReserved(1); err != nil {
			return err
		}
		if _, err := img.prepareL2(l1i); err != nil {
			return err
		}
		if err := img.commit(&w); err != nil {
			return err
		}
	}
	if len(punch) == 0 {
		return nil
	}
	if err := img.f.Sync(); err != nil {
		return err
	}
	for _, p := range mergeRuns(punch) {
		if err := img.f.PunchHole(p.start*img.cs, p.n*img.cs); err != nil {
			return err
		}
	}
	return nil
}
