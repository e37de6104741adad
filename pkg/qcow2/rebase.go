package qcow2

import (
	"bytes"
	"fmt"
)

// Rebase changes the backing file of the qcow2 image at path to newBacking
// (format newFormat, "qcow2" or "raw"); newBacking "" removes the backing
// file. newBacking is stored verbatim and, when relative, resolves against
// the image's directory, as qemu-img rebase does.
//
// Unsafe only rewrites the backing file name and format in the header. The
// safe mode first copies into the image every cluster it leaves
// unallocated whose content differs between the old and the new chain, so
// that what the guest reads does not change; the old chain must then open
// under pol. A crash at any point leaves the image with either the old
// backing file and content that reads the same through it, or the new one
// with everything copied: the copy is flushed before the header switch.
func Rebase(path, newBacking, newFormat string, unsafe bool, pol BackingPolicy) error {
	if newBacking == "" {
		newFormat = ""
	}
	switch {
	case newBacking != "" && newFormat == "":
		return fmt.Errorf("%w: backing format must be specified", ErrInvalid)
	case newFormat != "" && newFormat != "qcow2" && newFormat != "raw":
		return fmt.Errorf("%w: backing file format %q", ErrUnsupported, newFormat)
	}
	opts := Options{Backing: pol, NoBacking: unsafe}
	img, err := Open(path, opts)
	if err != nil {
		return err
	}
	if !unsafe {
		err = img.rebaseCopy(newBacking, newFormat, pol)
	}
	if err == nil {
		err = img.Flush()
	}
	if err == nil {
		img.mu.Lock()
		err = img.setBackingLocked(newBacking, newFormat)
		img.mu.Unlock()
	}
	if cerr := img.Close(); err == nil {
		err = cerr
	}
	return err
}

// rebaseCopy writes into img (opened with its old chain) the old content of
// every cluster img leaves unallocated where the new chain reads otherwise.
func (img *Image) rebaseCopy(newBacking, newFormat string, pol BackingPolicy) error {
	var nb Disk
	if newBacking != "" {
		var err error
		nb, err = openBacking(img.name, newBacking, newFormat, Options{ReadOnly: true, Backing: pol}, 1)
		if err != nil {
			return fmt.Errorf("could not open new backing file %q: %w", newBacking, err)
		}
		defer nb.Close()
	}
	size := img.Size()
	exts, err := img.Map(0, size)
	if err != nil {
		return err
	}
	cs := img.cs
	chunk := max(cs, 1<<20/cs*cs)
	oldBuf := make([]byte, chunk)
	newBuf := make([]byte, chunk)
	for _, e := range exts {
		if e.Present && e.Depth == 0 {
			continue // allocated (or a zero cluster) in this image
		}
		if e.Zero && !e.Data {
			zero, err := diskIsZero(nb, e.Start, e.Length)
			if err != nil {
				return err
			}
			if zero {
				continue
			}
		}
		for off, end := e.Start, e.Start+e.Length; off < end; {
			n := min(end, (off/chunk+1)*chunk) - off
			o, nw := oldBuf[:n], newBuf[:n]
			if _, err := img.ReadAt(o, off); err != nil {
				return err
			}
			if err := readDisk(nb, nw, off); err != nil {
				return fmt.Errorf("reading new backing file at %d: %w", off, err)
			}
			// Compare and copy one cluster at a time: only clusters that
			// differ get allocated.
			for i := int64(0); i < n; {
				m := min(n-i, cs-(off+i)%cs)
				if !bytes.Equal(o[i:i+m], nw[i:i+m]) {
					if err := img.rebaseWrite(o[i:i+m], off+i); err != nil {
						return err
					}
				}
				i += m
			}
			off += n
		}
	}
	return nil
}

// rebaseWrite stores old-chain content p at guest offset off. A whole
// cluster of zeros on a version 3 image becomes a zero cluster.
func (img *Image) rebaseWrite(p []byte, off int64) error {
	if int64(len(p)) == img.cs && off%img.cs == 0 && img.hdr.Version >= 3 && isZero(p) {
		return img.zeroUnallocated(off / img.cs)
	}
	_, err := img.WriteAt(p, off)
	return err
}

// zeroUnallocated turns guest cluster vi, if this image leaves it
// unallocated, into a zero cluster (version 3 only) whatever the backing
// chain holds there. Used where the chain reads zeros already, so the
// guest-visible content does not change and no sync is needed.
func (img *Image) zeroUnallocated(vi int64) error {
	if err := img.writable(); err != nil {
		return err
	}
	img.mu.Lock()
	defer img.mu.Unlock()
	if err := img.writable(); err != nil {
		return err
	}
	if err := img.checkRange(vi*img.cs, 1); err != nil {
		return err
	}
	m, err := img.lookup(vi)
	if err != nil || m.kind != kindUnallocated {
		return err
	}
	if err := img.markDirty(); err != nil {
		return err
	}
	if err := img.ensureReserved(1); err != nil {
		return err
	}
	if _, err := img.prepareL2(vi / img.l2Entries); err != nil {
		return err
	}
	e, bitmap := img.zeroEntry()
	return img.commit(&writeBatch{l2: []l2Update{{vi, e, bitmap}}})
}

// setBackingLocked rewrites cluster 0 so that the image names a new backing
// file and format ("" for none). Everything else is kept as it is on disk:
// the header is re-read from the file, so table offsets, feature bits and
// unknown extensions stay untouched. The caller holds mu exclusively and
// has made every data write the switch depends on durable.
func (img *Image) setBackingLocked(name, format string) error {
	if err := img.writable(); err != nil {
		return err
	}
	h, err := readHeader(img.f)
	if err != nil {
		return err
	}
	h.BackingFile, h.BackingFormat = name, format
	if name == "" {
		h.BackingFormat = ""
	}
	if err := img.rewriteHeader(h); err != nil {
		return err
	}
	img.hdr.BackingFile, img.hdr.BackingFormat = h.BackingFile, h.BackingFormat
	return nil
}

// rewriteHeader writes h (read from the file and changed by the caller) as
// cluster 0, durably, and takes over the layout fields encoding set.
func (img *Image) rewriteHeader(h *Header) error {
	buf, err := h.encode()
	if err != nil {
		return err
	}
	if err := img.checkMetaWrite(0, metaHeader); err != nil {
		return err
	}
	if _, err := img.f.WriteAt(buf, 0); err != nil {
		return err
	}
	if err := img.f.Sync(); err != nil {
		return err
	}
	img.hdr.BackingFileOffset, img.hdr.BackingFileSize = h.BackingFileOffset, h.BackingFileSize
	img.hdr.HeaderLength = h.HeaderLength
	return nil
}
