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
	if _, err := rebaseFormat(newBacking, newFormat); err != nil {
		return err
	}
	img, err := Open(path, Options{Backing: pol, NoBacking: unsafe})
	if err != nil {
		return err
	}
	err = img.Rebase(newBacking, newFormat, unsafe, pol)
	if cerr := img.Close(); err == nil {
		err = cerr
	}
	return err
}

// Rebase is the package-level Rebase on an open image, which the safe mode
// needs opened with its old backing chain. Afterwards the image still
// reads through its old chain: close it and open it again to go on.
func (img *Image) Rebase(newBacking, newFormat string, unsafe bool, pol BackingPolicy) error {
	newFormat, err := rebaseFormat(newBacking, newFormat)
	if err != nil {
		return err
	}
	if !unsafe && img.opts.NoBacking && img.Header().BackingFile != "" {
		return fmt.Errorf("%w: a safe rebase needs the image opened with its backing chain", ErrInvalid)
	}
	if !unsafe {
		if err := img.rebaseCopy(newBacking, newFormat, pol); err != nil {
			return err
		}
	}
	if err := img.Flush(); err != nil {
		return err
	}
	img.lockQuiesced()
	defer img.mu.Unlock()
	return img.setBackingLocked(newBacking, newFormat)
}

// rebaseFormat validates the new backing format and returns it ("" when
// the backing file is removed).
func rebaseFormat(newBacking, newFormat string) (string, error) {
	if newBacking == "" {
		return "", nil
	}
	switch {
	case newFormat == "":
		return "", fmt.Errorf("%w: backing format must be specified", ErrInvalid)
	case newFormat != "qcow2" && newFormat != "raw":
		return "", fmt.Errorf("%w: backing file format %q", ErrUnsupported, newFormat)
	}
	return newFormat, nil
}

// rebaseCopy writes into img (opened with its old chain) the old content of
// every cluster img leaves unallocated where the new chain reads otherwise.
func (img *Image) rebaseCopy(newBacking, newFormat string, pol BackingPolicy) error {
	var nb Disk
	if newBacking != "" {
		opts := Options{ReadOnly: true, Backing: pol}
		ch, err := newChainAt(img.name, img.f, opts)
		if err != nil {
			return err
		}
		opts.chain = ch
		nb, err = openBacking(img.name, newBacking, newFormat, opts, 1)
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
	img.lockQuiesced()
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

// setBackingLocked rewrites the header so that the image names a new
// backing file and format ("" for none), crash-safely (rewriteHeader).
// Everything else is kept as it is on disk: the header is re-read from the
// file, so table offsets, feature bits and unknown extensions stay
// untouched. The caller holds mu exclusively and has made every data write
// the switch depends on durable.
func (img *Image) setBackingLocked(name, format string) error {
	if err := img.writable(); err != nil {
		return err
	}
	if name == "" {
		format = ""
	}
	h, err := readHeader(img.f)
	if err != nil {
		return err
	}
	h.BackingFile, h.BackingFormat = name, format
	if err := img.rewriteHeader(h); err != nil {
		return err
	}
	img.hdr.BackingFile, img.hdr.BackingFormat = h.BackingFile, h.BackingFormat
	return nil
}
