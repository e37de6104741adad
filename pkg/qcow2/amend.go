package qcow2

import "fmt"

// hdrOffCompat is the offset of compatible_features in a version 3 header.
const hdrOffCompat = 80

// Amend changes the image options that can change in place. Only
// lazy_refcounts is supported (nil leaves it as it is). Turning lazy
// refcounts off on a dirty image is safe: Open rebuilds the refcounts of a
// dirty image before anything else, and the bit is cleared only once that
// is durable.
func Amend(path string, lazyRefcounts *bool) error {
	img, err := Open(path, Options{NoBacking: true})
	if err != nil {
		return err
	}
	if lazyRefcounts != nil {
		err = img.setLazyRefcounts(*lazyRefcounts)
	}
	if cerr := img.Close(); err == nil {
		err = cerr
	}
	return err
}

func (img *Image) setLazyRefcounts(on bool) error {
	if err := img.Flush(); err != nil {
		return err
	}
	img.lockQuiesced()
	defer img.mu.Unlock()
	if err := img.writable(); err != nil {
		return err
	}
	if img.lazy() == on {
		return nil
	}
	if img.hdr.Version < 3 {
		return fmt.Errorf("%w: lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)", ErrUnsupported)
	}
	if !on {
		// Everything is durable (Flush above); make the refcounts exact
		// on disk before the image stops being repaired on open.
		if err := img.closeCleanLocked(); err != nil {
			return err
		}
	}
	v := img.hdr.CompatibleFeatures
	if on {
		v |= compatLazyRefcounts
	} else {
		v &^= compatLazyRefcounts
	}
	return img.storeCompatLocked(v)
}

// storeCompatLocked writes compatible_features durably. Caller holds mu.
func (img *Image) storeCompatLocked(v uint64) error {
	if err := img.checkMetaWrite(hdrOffCompat, metaHeader); err != nil {
		return err
	}
	if err := img.writeU64(hdrOffCompat, v); err != nil {
		return err
	}
	if err := img.f.Sync(); err != nil {
		return err
	}
	img.hdr.CompatibleFeatures = v
	return nil
}
