package qcow2

// SetFreezeHook makes l call fn after each durable step of a Freeze
// ("settled", "linked", "created", "renamed"); an error from fn fails the
// Freeze at that point.
func SetFreezeHook(l *Live, fn func(step string) error) { l.stepHook = fn }

// LiveOn makes a Live handle of an image opened writable with its chain
// (OpenLive opens one by path; this takes one on any File, a crash
// recorder say).
func LiveOn(img *Image) *Live { return &Live{img: img} }

// SetCollapseHook makes l's Collapse call fn with the top after it has
// chosen what a window [off, off+n) needs and before it copies any of it,
// with no lock held (also in the switch's last pass, where the handle is
// held: fn must not use it there).
func SetCollapseHook(l *Live, fn func(top *Image, off, n int64)) { l.collapseHook = fn }

// SetCollapseBatch makes l's Collapse copy at most n bytes of data per
// step (a step is at least one cluster).
func SetCollapseBatch(l *Live, n int64) { l.collapseBatch = n }

// CommitImages is Commit on images already open: top without its chain
// (read-only with drop), base writable. It closes both.
func CommitImages(top *Image, base Disk, drop bool) error { return commitImages(top, base, drop) }

// WithJournal returns opts for OpenFile with jf as the write journal and
// boot as the host's boot identity.
func WithJournal(opts Options, jf File, boot [16]byte) Options {
	opts.Journal, opts.journalFile, opts.bootID = true, jf, &boot
	return opts
}

// WithBoot returns opts that take boot as the host's boot identity.
func WithBoot(opts Options, boot [16]byte) Options {
	opts.bootID = &boot
	return opts
}

// HostBoot is this host's boot identity, as the journal records it.
func HostBoot() [16]byte { b, _ := currentBoot(Options{}); return b }

// IsZero reports whether b holds only zero bytes.
func IsZero(b []byte) bool { return isZero(b) }

// WithFileHooks returns opts whose opens by path (image, journal, a
// Freeze's new overlay) go through wrap, and whose Freeze directory syncs
// go through syncDir.
func WithFileHooks(opts Options, wrap func(path string, f File) File, syncDir func(dir string) error) Options {
	opts.io = &fileHooks{wrap: wrap, syncDir: syncDir}
	return opts
}
