package qcow2

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// The durable steps of a Freeze, in order. After each one the files are in
// one of the crash states docs/engine.md lists ("External snapshots").
const (
	freezeSettled = "settled" // old top flushed, clean, synced
	freezeLinked  = "linked"  // the snapshot path is a second name of the old top
	freezeCreated = "created" // the new overlay is complete under its temporary name
	freezeRenamed = "renamed" // the volume path names the new overlay
)

// freezePlan names the files of one Freeze, all absolute.
type freezePlan struct {
	volume   string // the top's path: keeps naming the volume's writable top
	snapshot string // where the frozen layer ends up
	tmp      string // the new overlay until it is complete
	// backing is the new overlay's backing file name: snapshot relative
	// to the volume's directory.
	backing string
}

// freezeTemp is the temporary name of a volume's new overlay. It is fixed,
// so that RecoverFreeze can find a leftover.
func freezeTemp(volume string) string {
	return filepath.Join(filepath.Dir(volume), "."+filepath.Base(volume)+".freeze")
}

// Freeze takes a live external snapshot. The current top, with every write
// that completed before Freeze was called, becomes the read-only layer at
// snapshotPath; the volume's path then names a new, empty overlay whose
// backing file is that layer, and the handle goes on writing there.
//
// Requests in flight finish on the old top first; new ones wait until the
// switch is done. The file at the volume's path keeps the volume's
// identity (the driver's volumes/<id>.qcow2), and the frozen layer moves
// to snapshotPath (snapshots/<id>.qcow2), which must not exist and must be
// on the same filesystem. The new overlay names it relative to the
// volume's directory, so the backing policy confines it like any other
// backing file; the old top's own backing name must still resolve to the
// same file from snapshotPath's directory (true for sibling directories
// such as volumes/ and snapshots/, and within one directory).
//
// On disk: the old top is flushed and made clean, snapshotPath becomes a
// hard link to it, the new overlay is written and synced under a temporary
// name and renamed over the volume's path, with a directory sync after
// each name change. A crash at any point leaves a volume path that opens
// with the guest's data; a snapshot path that is the same file as the
// volume is an interrupted Freeze, which RecoverFreeze undoes. On an
// error before the rename, Freeze undoes its steps and the handle carries
// on with the old top; an error after it (a failed directory sync) leaves
// the handle on the new top.
func (l *Live) Freeze(snapshotPath string) error {
	l.ops.Lock()
	defer l.ops.Unlock()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ErrClosed
	}
	old := l.img
	p, err := planFreeze(old, snapshotPath)
	if err != nil {
		return err
	}
	next, err := l.freeze(old, p)
	if next == nil {
		return err
	}
	l.img = next
	old.forgetStoredBitmaps()
	next.adoptFrozenLock(old)
	if cerr := old.Close(); cerr != nil {
		err = errors.Join(err, fmt.Errorf("closing the frozen layer's old handle: %w", cerr))
	}
	next.settleFrozenLock()
	if old.opts.Journal {
		// The old top has let go of the volume's journal path.
		if jerr := next.startJournalLater(); jerr != nil {
			err = errors.Join(err, fmt.Errorf("the new top writes without a journal: %w", jerr))
		}
	}
	return err
}

// planFreeze validates a Freeze before anything is changed.
func planFreeze(old *Image, snapshotPath string) (freezePlan, error) {
	var p freezePlan
	if err := old.prepareWrite(); err != nil {
		return p, err
	}
	of, ok := hostFile(old.f)
	if !ok {
		return p, errorf(ErrUnsupported, "a live freeze needs an image stored in a host file")
	}
	p.volume, p.snapshot = absPath(old.name), absPath(snapshotPath)
	p.tmp = freezeTemp(p.volume)
	if p.snapshot == p.volume || p.snapshot == p.tmp {
		return p, errorf(ErrInvalid, "snapshot path %s names the volume itself", snapshotPath)
	}
	open, err := of.f.Stat()
	if err != nil {
		return p, err
	}
	named, err := os.Stat(p.volume)
	if err != nil || !os.SameFile(open, named) {
		return p, errorf(ErrInvalid, "%s is no longer the file this handle has open", p.volume)
	}
	volDir, snapDir := filepath.Dir(p.volume), filepath.Dir(p.snapshot)
	if p.backing, err = filepath.Rel(volDir, p.snapshot); err != nil {
		return p, err
	}
	if hasProtocolPrefix(p.backing) {
		return p, errorf(ErrPolicy, "snapshot file name %q would read as a protocol prefix", p.backing)
	}
	switch pol := old.opts.Backing; {
	case pol.Standalone:
		return p, errorf(ErrPolicy, "the volume must stand alone: a frozen layer would be its backing file")
	case pol.Exact:
		// The caller names the snapshot path: the new overlay's policy
		// lists it (overlayPolicy).
	case !pol.AllowAnyPath:
		root := pol.Root
		if root == "" {
			root = volDir
		}
		if !inside(absPath(root), p.snapshot) {
			return p, errorf(ErrPolicy, "snapshot path %s is outside %s, where the new overlay may name backing files", p.snapshot, root)
		}
	}
	if b := old.Header().BackingFile; b != "" && !filepath.IsAbs(b) && filepath.Join(volDir, b) != filepath.Join(snapDir, b) {
		return p, errorf(ErrInvalid, "the top's backing file %q would name another file from %s", b, snapDir)
	}
	if err := p.dropHalfDone(); err != nil {
		return p, err
	}
	if _, err := os.Lstat(p.snapshot); err == nil {
		return p, fmt.Errorf("snapshot file %s: %w", p.snapshot, fs.ErrExist)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return p, err
	}
	return p, nil
}

// inside reports whether path lies in the tree under root (both absolute
// and clean).
func inside(root, path string) bool {
	rel, err := filepath.Rel(root, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

// freeze runs the steps. It returns the new top once the volume path names
// it (with an error if a later step failed); before that it undoes what it
// did and returns nil and the error.
func (l *Live) freeze(old *Image, p freezePlan) (next *Image, err error) {
	step := func(name string) error {
		if l.stepHook != nil {
			return l.stepHook(name)
		}
		return nil
	}
	renamed := false
	defer func() {
		if err == nil || renamed {
			return
		}
		if next != nil {
			next.Close()
			next = nil
		}
		if rerr := p.dropHalfDone(); rerr != nil {
			err = errors.Join(err, fmt.Errorf("undoing the freeze: %w", rerr))
		}
		if rerr := old.resumeBitmaps(); rerr != nil {
			err = errors.Join(err, fmt.Errorf("tracking the bitmaps again: %w", rerr))
		}
	}()
	if err := old.settle(); err != nil {
		return nil, err
	}
	if err := step(freezeSettled); err != nil {
		return nil, err
	}
	if err := os.Link(p.volume, p.snapshot); err != nil {
		return nil, fmt.Errorf("naming the frozen layer: %w", err)
	}
	if err := old.opts.syncDirOf(p.snapshot); err != nil {
		return nil, err
	}
	if err := step(freezeLinked); err != nil {
		return nil, err
	}
	if next, err = p.createOverlay(old); err != nil {
		return nil, fmt.Errorf("creating the new overlay: %w", err)
	}
	if err := step(freezeCreated); err != nil {
		return next, err
	}
	if err := os.Rename(p.tmp, p.volume); err != nil {
		return next, err
	}
	renamed = true
	if err := old.opts.syncDirOf(p.volume); err != nil {
		return next, fmt.Errorf("the volume names the new overlay, but syncing its directory failed: %w", err)
	}
	return next, step(freezeRenamed)
}

// settle makes the image on disk a clean, complete file while it stays
// open for writing: completed writes and deferred frees durable, unused
// reserved clusters returned, the dirty bit clear (as a clean Close).
func (img *Image) settle() error {
	if err := img.Flush(); err != nil {
		return err
	}
	img.lockQuiesced()
	defer img.mu.Unlock()
	if img.keepDirty {
		return errorf(ErrInvalid, "a failed snapshot operation left the refcounts to repair; reopen the image before freezing it")
	}
	// The persistent bitmaps go to the file, not in use, before it gets
	// the snapshot's name: the frozen layer is never written after that
	// (forgetStoredBitmaps), and a crash after the link must find them
	// consistent. They stay in memory for resumeBitmaps.
	if err := img.storeBitmapsLocked(); err != nil {
		return err
	}
	return img.closeCleanLocked()
}

// resumeBitmaps makes an image whose Freeze was undone track its
// bitmaps again: in memory at once, and in use on disk, durably, before
// the next guest write. Should marking them fail, writes stay refused
// until a retry succeeds (markBitmapsInUse): a bitmap stored as
// consistent must never miss a write.
func (img *Image) resumeBitmaps() error {
	img.lockQuiesced()
	defer img.mu.Unlock()
	if len(img.bm.mem) == 0 || img.bm.live.Load() != nil {
		return nil
	}
	img.publishLive()
	img.bm.markPending.Store(true)
	return img.markInUseLocked()
}

// markBitmapsInUse retries what resumeBitmaps could not do; writable
// calls it while it is pending.
func (img *Image) markBitmapsInUse() error {
	img.lockQuiesced()
	defer img.mu.Unlock()
	// What refuses writes may have come about while the lock was awaited
	// (a failed checkpoint, corruption found, a close).
	if img.closed {
		return ErrClosed
	}
	if err := img.writableBase(); err != nil {
		return err
	}
	return img.markInUseLocked()
}

func (img *Image) markInUseLocked() error {
	if !img.bm.markPending.Load() {
		return nil
	}
	if err := img.setInUse(img.bm.mem); err != nil {
		return fmt.Errorf("marking the persistent bitmaps in use before a write: %w", err)
	}
	img.bm.markPending.Store(false)
	return nil
}

// forgetStoredBitmaps drops the bitmaps settle stored from a frozen
// layer's old handle, so that its Close does not write them again into
// a file that is a snapshot by then.
func (img *Image) forgetStoredBitmaps() {
	img.lockQuiesced()
	defer img.mu.Unlock()
	img.bm.mem = nil
	img.bm.live.Store(nil)
}

// createOverlay writes the new top under p.tmp, with old's format options
// and the frozen layer as its backing file, syncs it and opens it (named
// as the volume, so that its backing name resolves from there).
func (p freezePlan) createOverlay(old *Image) (*Image, error) {
	mode := fs.FileMode(0o644)
	if st, err := os.Stat(p.volume); err == nil {
		mode = st.Mode().Perm()
	}
	fh, err := os.OpenFile(p.tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return nil, err
	}
	of := &osFile{f: fh, canPunch: true}
	// The new top is the volume's writable file: it carries a writer's
	// lock from its first byte on (the lock follows the inode across
	// the rename).
	if err := of.setLock(lockModeFor(Options{NoLock: old.opts.NoLock})); err != nil {
		of.Close()
		return nil, err
	}
	f := old.opts.wrapFile(p.tmp, of)
	h := old.Header()
	co := CreateOptions{
		Size:            old.Size(),
		ClusterSize:     old.cs,
		RefcountBits:    1 << h.RefcountOrder,
		Compat:          "1.1",
		LazyRefcounts:   h.CompatibleFeatures&compatLazyRefcounts != 0,
		CompressionType: "zlib",
		ExtendedL2:      old.ext,
		BackingFile:     p.backing,
		BackingFormat:   "qcow2",
		Backing:         p.overlayPolicy(old.opts.Backing),
	}
	if h.Version < 3 {
		co.Compat = "0.10"
	}
	if h.CompressionType == 1 {
		co.CompressionType = "zstd"
	}
	if err := CreateFile(f, p.volume, co); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, err
	}
	opts := old.opts
	opts.Backing = co.Backing
	// The new top does without a write journal: the volume's journal
	// path is still the frozen layer's until the switch. Its backing
	// chain is attached below, not opened by name.
	opts.ReadOnly, opts.NoBacking, opts.Journal = false, true, false
	next, err := OpenFile(f, p.volume, opts)
	if err != nil {
		return nil, err
	}
	frozen, err := openFrozenLayer(old, p)
	if err != nil {
		next.Close()
		return nil, fmt.Errorf("opening the frozen layer: %w", err)
	}
	next.backing, next.opts.NoBacking = frozen, false
	return next, nil
}

// openFrozenLayer opens the frozen layer, read-only, as the new top's
// backing file, on a duplicate of the old top's descriptor. A duplicate
// shares the open file description and with it the old top's writer lock:
// opening the file anew would make this process conflict with its own
// lock (OFD locks of two opens conflict, even in one process), and
// waiting for the old handle to close would leave the file unlocked for
// a moment. The old handle keeps owning the lock bytes until the switch
// is done (adoptFrozenLock): should the Freeze be undone, closing the
// frozen layer releases nothing.
func openFrozenLayer(old *Image, p freezePlan) (*Image, error) {
	of, ok := hostFile(old.f)
	if !ok {
		return nil, errorf(ErrUnsupported, "a live freeze needs an image stored in a host file")
	}
	fd, err := unix.FcntlInt(of.f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := &osFile{f: os.NewFile(uintptr(fd), p.snapshot), canPunch: true}
	opts := old.opts
	opts.ForceShare = false
	// The frozen layer is the new top's first backing file: the chain
	// (loops, budget) starts at the new top.
	ch, err := newChainAt(p.tmp, nil, opts)
	if err == nil {
		err = ch.admit(p.tmp, p.backing, p.snapshot, f.f)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	opts.chain = ch
	d, err := openBackingFile(p.volume, f, p.snapshot, "qcow2", opts, 1, false)
	if err != nil {
		return nil, err
	}
	return d.(*Image), nil
}

// frozenFile is the descriptor of the frozen layer under img, the new
// top of a Freeze.
func (img *Image) frozenFile() *osFile {
	if b, ok := img.backing.(*Image); ok {
		if f, ok := hostFile(b.f); ok {
			return f
		}
	}
	return nil
}

// adoptFrozenLock hands the lock bytes of old's descriptor to the frozen
// layer's duplicate of it, before old is closed: old's Close then leaves
// them (its descriptor closes, the shared description stays open).
func (img *Image) adoptFrozenLock(old *Image) {
	f, of := img.frozenFile(), (*osFile)(nil)
	if h, ok := hostFile(old.f); ok {
		of = h
	}
	if f != nil && of != nil {
		f.lock, of.lock = of.lock, lockNone
	}
}

// settleFrozenLock drops, once the old top's handle is closed, the
// writer's lock bytes the frozen layer (img's backing) took over: it
// keeps what a reader of a backing file holds.
func (img *Image) settleFrozenLock() {
	if f := img.frozenFile(); f != nil {
		// Dropping bytes cannot fail or conflict (setLock).
		_ = f.setLock(backingLockMode(img.opts, false))
	}
}

// overlayPolicy is the new overlay's backing policy: the old top's, and
// under an Exact policy the frozen layer listed besides the old files.
func (p freezePlan) overlayPolicy(pol BackingPolicy) BackingPolicy {
	if pol.Exact {
		pol.Files = append(slices.Clip(pol.Files), p.snapshot)
	}
	return pol
}

// dropHalfDone removes what an unfinished Freeze of p.volume left behind:
// the temporary overlay, and a snapshot path that is still the same file
// as the volume (linked, but the volume was never switched).
func (p freezePlan) dropHalfDone() error {
	if err := os.Remove(p.tmp); err == nil {
		if err := syncDir(filepath.Dir(p.tmp)); err != nil {
			return err
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	snap, err := os.Lstat(p.snapshot)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	vol, err := os.Stat(p.volume)
	if err != nil || !os.SameFile(snap, vol) {
		return err
	}
	if err := os.Remove(p.snapshot); err != nil {
		return err
	}
	return syncDir(filepath.Dir(p.snapshot))
}

// RecoverFreeze settles what a crash during Freeze(snapshotPath) of the
// volume at volumePath left, before the volume is opened again: the
// temporary overlay is removed, and so is a snapshot path that is still a
// second name of the volume (the freeze had not switched the volume). It
// reports whether snapshotPath now holds a frozen layer of its own. The
// volume path itself always opens: it is the old top or the new overlay.
func RecoverFreeze(volumePath, snapshotPath string) (frozen bool, err error) {
	p := freezePlan{volume: absPath(volumePath), snapshot: absPath(snapshotPath)}
	p.tmp = freezeTemp(p.volume)
	if _, err := os.Stat(p.volume); err != nil {
		return false, err
	}
	if err := p.dropHalfDone(); err != nil {
		return false, err
	}
	_, err = os.Lstat(p.snapshot)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	}
	return false, err
}

// syncDir makes the names in dir durable (fsync of the directory).
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
