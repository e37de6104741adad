package qcow2

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
)

// JournalPath is where Open keeps the write journal of the image at path.
func JournalPath(path string) string { return path + ".journal" }

var hostBoot struct {
	once sync.Once
	id   [16]byte
	ok   bool
}

// currentBoot returns this boot's identity (the kernel's boot_id); ok is
// false where there is none, and the journal is then not used.
func currentBoot(opts Options) (id [16]byte, ok bool) {
	if opts.bootID != nil {
		return *opts.bootID, true
	}
	hostBoot.once.Do(func() {
		b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
		if err != nil {
			return
		}
		s := strings.ReplaceAll(strings.TrimSpace(string(b)), "-", "")
		if n, err := hex.Decode(hostBoot.id[:], []byte(s)); err == nil && n == 16 {
			hostBoot.ok = true
		}
	})
	return hostBoot.id, hostBoot.ok
}

// openJournalFile opens the journal of the image at path when the open
// needs one: the image has journal-only mappings (the bit, from its
// header), or opts.Journal asks for a writable image to use one. It
// returns nil when neither holds.
func openJournalFile(path string, f File, opts Options) (File, error) {
	pending := journalBitSet(f)
	want := opts.Journal && !opts.ReadOnly
	if !pending && !want {
		return nil, nil
	}
	jpath := JournalPath(path)
	flag := os.O_RDWR | syscall.O_NOFOLLOW
	if opts.ReadOnly {
		flag = os.O_RDONLY | syscall.O_NOFOLLOW
	}
	fh, err := os.OpenFile(jpath, flag, 0)
	if errors.Is(err, fs.ErrNotExist) && !pending {
		fh, err = createJournalFile(jpath)
	}
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w, but its journal %s is missing: the writes it held are lost; `img check -r all` discards it", ErrJournalPending, jpath)
	}
	if err != nil {
		return nil, err
	}
	jf := &osFile{f: fh, canPunch: true}
	if !opts.ReadOnly {
		// One writer per journal: a second writer of the same image
		// would interleave generations and records. (Readers take no
		// lock: the image's lock keeps them from a writer, unless they
		// force-share, which accepts a changing view.)
		if err := jf.lockWhole(); err != nil {
			jf.Close()
			return nil, err
		}
	}
	return opts.wrapFile(jpath, jf), nil
}

// settleJournalOnOpen handles the journal of an image being opened
// writable whose header says it has journal-only mappings: it applies
// them if the journal was written since this boot (the process was
// killed), else discards it (a power failure or reboot: their data may
// not be on disk); then it clears the bit. It runs before anything else
// reads the metadata, the refcount rebuild of a dirty image included (the
// clusters the journal maps must count as used). It reports whether it
// discarded records: the clusters they mapped are leaked then, and the
// caller rebuilds the refcounts to return them. (They cannot be freed one
// by one: after a power failure the journal's header may be older than
// its last checkpoint, and a cluster an old record names may be in use
// elsewhere by now.)
func settleJournalOnOpen(f File, h *Header, jf File, opts Options) (discarded bool, err error) {
	tmp := &Image{f: f, opts: opts, hdr: h}
	if err := tmp.loadTables(); err != nil {
		return false, err
	}
	boot, bootOK := currentBoot(opts)
	gen, jboot, ok := readJournalHeader(jf)
	replay := ok && bootOK && jboot == boot
	if replay {
		// A writeback error nobody has seen yet (the writer was killed
		// before its next sync) is reported to this descriptor's first
		// sync: the data the records map may be lost, so they must not
		// be replayed, now or by a retried open.
		if err := f.Sync(); err != nil {
			poisonJournal(jf)
			return false, fmt.Errorf("the image's data may be lost (a sync failed), so its write journal is discarded; open it again to repair: %w", err)
		}
	}
	switch {
	case replay:
		ups, err := tmp.journalMappings(jf, gen)
		if err != nil {
			return false, err
		}
		if err := tmp.pinMappings(ups); err != nil {
			return false, err
		}
	default:
		// Any record, even of a header that did not persist, may have
		// taken a cluster.
		size, err := jf.Size()
		if err != nil {
			return false, err
		}
		discarded = size > journalHeaderSize
	}
	tmp.jr.f, tmp.jr.gen, tmp.jr.boot = jf, gen, boot
	if err := tmp.checkpointSteps(); err != nil {
		return false, fmt.Errorf("applying the write journal: %w", err)
	}
	return discarded, f.Sync()
}

// loadJournalReadOnly shows a read-only image's journal-only mappings
// (written since this boot) without writing anything: they are pinned in
// the L2 cache, as they were in the process that wrote them.
func (img *Image) loadJournalReadOnly(jf File) error {
	boot, bootOK := currentBoot(img.opts)
	gen, jboot, ok := readJournalHeader(jf)
	if !ok || !bootOK || jboot != boot {
		return nil
	}
	ups, err := img.journalMappings(jf, gen)
	if err != nil {
		return err
	}
	return img.pinMappings(ups)
}

// journalMappings reads the journal's records of generation gen and checks
// each: a guest cluster inside the disk, mapped to a host cluster inside
// the file that holds no metadata.
func (img *Image) journalMappings(jf File, gen uint64) ([]l2Update, error) {
	recs, err := readJournalRecords(jf, gen)
	if err != nil {
		return nil, err
	}
	fsize, err := img.f.Size()
	if err != nil {
		return nil, err
	}
	clusters := uint64(ceilDiv(img.size, img.cs))
	ups := make([]l2Update, 0, len(recs))
	for i, r := range recs {
		host := int64(r.entry & l2OffsetMask)
		switch {
		case r.vi >= clusters:
			return nil, errorf(ErrInvalid, "write journal record %d maps guest cluster %d beyond the disk", i, r.vi)
		case r.entry&oflagCompressed != 0 || host == 0 || host&(img.cs-1) != 0 || host > fsize-img.cs:
			return nil, errorf(ErrInvalid, "write journal record %d maps guest cluster %d to %#x, not a data cluster of this file", i, r.vi, host)
		case img.meta.kind(host>>img.cb) != metaNone:
			return nil, errorf(ErrInvalid, "write journal record %d maps guest cluster %d onto the %s", i, r.vi, img.meta.kind(host>>img.cb))
		}
		ups = append(ups, l2Update{vi: int64(r.vi), entry: r.entry, bitmap: r.bitmap})
	}
	return ups, nil
}

// closeJournal closes the journal file at Close and removes it when
// nothing is left in it and the Close was clean: only then is the
// header's journal bit known to be clear on disk (a checkpoint clears it
// without a sync), and a missing journal must never meet a set bit.
func (img *Image) closeJournal(clean bool) error {
	if img.jr.file == nil {
		return nil
	}
	err := img.jr.file.Close()
	if clean && img.jr.path != "" && err == nil && img.jr.err() == nil && !img.readOnly &&
		img.hdrIncompat.Load()&incompatJournal == 0 {
		if rerr := os.Remove(img.jr.path); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			err = rerr
		}
	}
	return err
}

// attachJournal gives an opened image its journal file: a read-only image
// shows the mappings it holds; a writable one whose options ask for it
// writes its copy-on-write mappings there.
func (img *Image) attachJournal(jf File, opts Options) error {
	img.jr.file, img.jr.path = jf, opts.journalPath
	if img.readOnly {
		if img.hdrIncompat.Load()&incompatJournal != 0 {
			return img.loadJournalReadOnly(jf)
		}
		return nil
	}
	boot, ok := currentBoot(opts)
	if !opts.Journal || !ok || img.hdr.Version < 3 {
		return nil
	}
	if g, ok := img.f.(*syncGuard); ok {
		g.onFail = func() { poisonJournal(jf) }
	}
	return img.startJournal(jf, boot)
}

// startJournalLater gives an open writable image without a journal the
// one at its path: a Freeze's new top, once the old top has closed the
// volume's journal (it is opened without one: until the switch, that
// path is the old top's). The caller holds the image alone.
func (img *Image) startJournalLater() error {
	if img.jr.file != nil || img.readOnly {
		return nil
	}
	opts := img.opts
	opts.Journal = true
	jf, err := openJournalFile(img.name, img.f, opts)
	if err != nil || jf == nil {
		return err
	}
	opts.journalPath = JournalPath(img.name)
	if err := img.attachJournal(jf, opts); err != nil {
		img.jr.file = nil
		jf.Close()
		return err
	}
	img.opts.Journal = true
	return nil
}

// poisonJournal overwrites the journal's header so that its records are
// never replayed: an open then discards them (and rebuilds the refcounts
// to return the clusters they took). It is for a failed sync of the
// image: the kernel may have dropped the data those records map, yet kept
// the records, and a replay on this boot would map clusters that read as
// whatever the disk held before. Not synced: after a reboot the journal
// is discarded anyway. A failed write is ignored: the image has failed
// already, and there is nothing left to tell.
func poisonJournal(jf File) {
	_, _ = jf.WriteAt(make([]byte, journalHeaderSize), 0)
}

// applyPendingJournal applies (or, after a reboot, discards) the journal
// of the image at path if its header says it has one, by opening it
// writable and closing it; a repair then sees the image as the writer
// left it. A missing journal is discarded: its writes are lost already,
// and the repair is what the error of Open asks for.
func applyPendingJournal(path string) error {
	fh, err := os.Open(path)
	if err != nil {
		return err
	}
	f := NewOSFile(fh)
	pending := journalBitSet(f)
	f.Close()
	if !pending {
		return nil
	}
	if _, err := os.Stat(JournalPath(path)); errors.Is(err, fs.ErrNotExist) {
		return dropJournalBit(path)
	}
	img, err := Open(path, Options{NoBacking: true})
	if err != nil {
		return err
	}
	return img.Close()
}

// dropJournalBit clears the journal bit of an image whose journal is gone.
func dropJournalBit(path string) error {
	fh, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	f := &osFile{f: fh}
	defer f.Close()
	if err := f.setLock(lockWriter); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	var b [8]byte
	if _, err := fh.ReadAt(b[:], hdrOffIncompat); err != nil {
		return err
	}
	binary.BigEndian.PutUint64(b[:], binary.BigEndian.Uint64(b[:])&^incompatJournal)
	if _, err := fh.WriteAt(b[:], hdrOffIncompat); err != nil {
		return err
	}
	return fh.Sync()
}

// journalBitSet reports whether f holds a version 3 qcow2 header with the
// journal bit set (version 2 headers end before incompatible_features).
func journalBitSet(f File) bool {
	var b [hdrOffIncompat + 8]byte
	if n, _ := f.ReadAt(b[:], 0); n < len(b) {
		return false
	}
	return string(b[:4]) == "QFI\xfb" && binary.BigEndian.Uint32(b[4:]) >= 3 &&
		binary.BigEndian.Uint64(b[hdrOffIncompat:])&incompatJournal != 0
}

// createJournalFile creates a journal and makes its name durable: after a
// power failure an image whose header says it has a journal must find
// one (it then discards it, written in another boot), not a missing file,
// which only a deletion explains.
func createJournalFile(jpath string) (*os.File, error) {
	fh, err := os.OpenFile(jpath, os.O_RDWR|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, err
	}
	d, err := os.Open(filepath.Dir(jpath))
	if err == nil {
		err = d.Sync()
		d.Close()
	}
	if err != nil {
		fh.Close()
		return nil, err
	}
	return fh, nil
}
