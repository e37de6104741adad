package qcow2

// The data mirror: for each guest cluster of a disk of at most
// maxMirrorClusters clusters, the host offset of its cluster when the
// active L2 table maps it to plain data, with mirrorCopied when the entry
// has OFLAG_COPIED, learnt by reads and in-place writes (dataWord); 0
// means not known. A 4 KiB read of a cached mapping then touches one
// 8-byte word instead of the L2 cache's chain (front slot, entry, slice
// bytes): after the kernel's copy evicted the user side's cache lines,
// each of those is a memory access (docs/benchmarks.md).
//
// It must never hold a host offset the L2 tables no longer map: every
// change of an L2 entry forgets that cluster's word (writeL2,
// pinMappings), and lockQuiesced, which every other metadata operation
// takes, forgets all of them. Readers fill words under the read lock, so
// an exclusive holder of mu sees none change; words are atomic because
// readers fill them concurrently.

import "sync/atomic"

// mirrorCopied marks a word whose entry has OFLAG_COPIED (host offsets
// are cluster aligned, so bit 0 is free).
const mirrorCopied = 1

// maxMirrorClusters bounds the mirror to 1 MiB per image (an 8 GiB disk
// at 64 KiB clusters); larger disks read through the L2 cache only.
const maxMirrorClusters = 1 << 17

// initMirror sizes the mirror for the disk (none for extended L2 entries,
// which the fast read path does not serve).
func (img *Image) initMirror() {
	if n := ceilDiv(img.size, img.cs); n <= maxMirrorClusters && !img.ext {
		img.mirror = make([]atomic.Uint64, n)
	}
}

// mirrored returns the word of guest cluster vi: its host offset, with
// mirrorCopied, or 0 if the mirror does not know it.
func (img *Image) mirrored(vi int64) uint64 {
	if uint64(vi) < uint64(len(img.mirror)) {
		return img.mirror[vi].Load()
	}
	return 0
}

// learnMirror records the word of guest cluster vi.
func (img *Image) learnMirror(vi int64, w uint64) {
	if uint64(vi) < uint64(len(img.mirror)) {
		img.mirror[vi].Store(w)
	}
}

// forgetMirror forgets guest cluster vi; called with mu held exclusively.
func (img *Image) forgetMirror(vi int64) {
	if uint64(vi) < uint64(len(img.mirror)) {
		img.mirror[vi].Store(0)
	}
}

// forgetMirrorAll forgets every cluster; called with mu held exclusively.
func (img *Image) forgetMirrorAll() {
	clear(img.mirror)
}
