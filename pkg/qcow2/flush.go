package qcow2

// Flush makes every completed write durable (fdatasync), then releases the
// clusters whose unlinking that sync made durable.
func (img *Image) Flush() error {
	img.mu.Lock()
	if img.closed {
		img.mu.Unlock()
		return ErrClosed
	}
	if img.readOnly {
		img.mu.Unlock()
		return nil
	}
	pend := img.alloc.pending
	img.alloc.pending = nil
	img.mu.Unlock()

	err := img.f.Sync()
	if err == nil && len(pend) > 0 {
		img.mu.Lock()
		err = img.applyFrees(pend)
		img.mu.Unlock()
		if err == nil {
			err = img.f.Sync()
		}
		return err
	}
	if err != nil {
		img.mu.Lock()
		img.alloc.pending = append(pend, img.alloc.pending...)
		img.mu.Unlock()
	}
	return err
}

// lazy reports whether the image uses lazy refcounts.
func (img *Image) lazy() bool { return img.hdr.CompatibleFeatures&compatLazyRefcounts != 0 }

// markDirty sets the dirty bit before the first metadata change of an image
// with lazy refcounts, so that a crash leads to a refcount rebuild on open.
func (img *Image) markDirty() error {
	if !img.lazy() || img.hdrIncompat.Load()&incompatDirty != 0 {
		return nil
	}
	v := img.hdrIncompat.Load() | incompatDirty
	if err := img.writeU64(hdrOffIncompat, v); err != nil {
		return err
	}
	if err := img.f.Sync(); err != nil {
		return err
	}
	img.hdrIncompat.Store(v)
	return nil
}

// closeCleanLocked returns reserved clusters, makes everything durable and
// clears the dirty bit, so that the closed image checks clean.
func (img *Image) closeCleanLocked() error {
	if err := img.releasePool(); err != nil {
		return err
	}
	if err := img.f.Sync(); err != nil {
		return err
	}
	if v := img.hdrIncompat.Load(); v&incompatDirty != 0 {
		if err := img.writeU64(hdrOffIncompat, v&^incompatDirty); err != nil {
			return err
		}
		img.hdrIncompat.Store(v &^ incompatDirty)
		return img.f.Sync()
	}
	return nil
}
