package qcow2

import "golang.org/x/sys/unix"

// preallocate allocates every L2 table and data cluster of a new image
// (metadata), and with falloc/full also the host space for the data. On
// extended L2 images the subclusters stay unallocated (bitmap 0), as
// QEMU leaves them: they read through to the backing file, if any.
func (img *Image) preallocate(mode string) error {
	img.lockQuiesced()
	defer img.mu.Unlock()
	total := ceilDiv(img.size, img.cs)
	for l1i := int64(0); l1i < ceilDiv(total, img.l2Entries); l1i++ {
		if _, err := img.prepareL2(l1i); err != nil {
			return err
		}
	}
	for vi := int64(0); vi < total; {
		n := min(total-vi, (vi/img.l2Entries+1)*img.l2Entries-vi, max(64<<20/img.cs, 1))
		start, err := img.allocRunLive(n)
		if err != nil {
			return err
		}
		ups := make([]l2Update, n)
		for k := range n {
			ups[k] = l2Update{vi + k, uint64((start+k)*img.cs) | oflagCopied, 0}
		}
		if err := img.writeL2(ups); err != nil {
			return err
		}
		if err := img.allocateSpace(mode, start*img.cs, n*img.cs); err != nil {
			return err
		}
		vi += n
	}
	return img.f.Sync()
}

// allocateSpace backs a host range with real blocks (falloc) or written
// zeros (full).
func (img *Image) allocateSpace(mode string, off, n int64) error {
	switch mode {
	case PreallocFalloc:
		if of, ok := hostFile(img.f); ok {
			if err := unix.Fallocate(int(of.f.Fd()), 0, off, n); err == nil {
				return nil
			}
		}
		return writeZeros(img.f, off, n)
	case PreallocFull:
		return writeZeros(img.f, off, n)
	}
	return nil
}
