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
	if err := img.jr.err(); err != nil {
		// The journal failed: what it held may never reach the image.
		img.mu.Unlock()
		return err
	}
	if img.jr.pending() {
		img.mu.Unlock()
		return img.flushJournaled()
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

// flushJournaled is Flush when mappings wait in the write journal: the
// checkpoint syncs the data, writes and syncs those mappings; only then
// may the clusters they unlinked be released. It holds mu throughout.
func (img *Image) flushJournaled() error {
	img.lockQuiesced()
	defer img.mu.Unlock()
	if err := img.jr.err(); err != nil {
		return err
	}
	// The checkpoint synced nothing if another operation checkpointed
	// between Flush's look at the journal and lockQuiesced, and that
	// operation (a discard, say) may have unlinked clusters since, with
	// L2 writes not yet durable. Their frees wait for this sync.
	if err := img.f.Sync(); err != nil {
		return err
	}
	pend := img.alloc.pending
	img.alloc.pending = nil
	if len(pend) == 0 {
		return nil
	}
	if err := img.applyFrees(pend); err != nil {
		return err
	}
	return img.f.Sync()
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

// beginDirtyOp sets the dirty bit before an operation whose refcount and
// OFLAG_COPIED changes are not consistent on disk until it completes (the
// snapshot operations). Lazy refcounts set it as usual (markDirty) and keep
// it until Close; other version 3 images get it for the operation only:
// owned reports that endDirtyOp must clear it. Version 2 has no dirty bit.
func (img *Image) beginDirtyOp() (owned bool, err error) {
	if img.lazy() {
		return false, img.markDirty()
	}
	v := img.hdrIncompat.Load()
	if img.hdr.Version < 3 || v&incompatDirty != 0 {
		return false, nil
	}
	if err := img.storeIncompat(v | incompatDirty); err != nil {
		// If the bit reached hdrIncompat it may be on disk: endDirtyOp
		// must keep it there.
		return img.hdrIncompat.Load()&incompatDirty != 0, err
	}
	return true, nil
}

// endDirtyOp ends an operation begun with beginDirtyOp; err is its result.
// On success everything the operation wrote is durable already (its last
// step was a Sync), so an owned bit is cleared and synced. On failure the
// bit stays set, also through Close, so that the next Open rebuilds the
// refcounts and OFLAG_COPIED flags.
func (img *Image) endDirtyOp(owned bool, err error) error {
	if err != nil {
		if img.hdrIncompat.Load()&incompatDirty != 0 {
			img.keepDirty = true
		}
		return err
	}
	if !owned || img.keepDirty {
		return nil
	}
	if err := img.storeIncompat(img.hdrIncompat.Load() &^ incompatDirty); err != nil {
		if img.hdrIncompat.Load()&incompatDirty != 0 {
			img.keepDirty = true // the write failed: the bit is still set
		}
		return err
	}
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
	if v := img.hdrIncompat.Load(); v&incompatDirty != 0 && !img.keepDirty {
		return img.storeIncompat(v &^ incompatDirty)
	}
	return nil
}

// storeIncompat writes incompatible_features, records it in hdrIncompat
// (before the sync: should the sync fail, the bits may be on disk) and
// syncs.
func (img *Image) storeIncompat(v uint64) error {
	if err := img.writeIncompat(v); err != nil {
		return err
	}
	return img.f.Sync()
}

// writeIncompat writes incompatible_features and records it in
// hdrIncompat, without a sync.
func (img *Image) writeIncompat(v uint64) error {
	if err := img.writeU64(hdrOffIncompat, v); err != nil {
		return err
	}
	img.hdrIncompat.Store(v)
	return nil
}
