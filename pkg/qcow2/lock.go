package qcow2

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Image locks (docs/engine.md, "Image locks"). QEMU marks every image file
// it opens with open file description (OFD) read locks on single bytes, so
// that two programs cannot write one image at once; we take the same bytes
// the same way, so that QEMU and this engine see each other's locks.
//
// A user of a file has permissions (what it does to the file) and shares
// some of them with other users (what it lets them do). For each
// permission bit i it holds a read lock on byte lockPermBase+i when it has
// the permission, and on byte lockSharedBase+i when it does NOT share it.
// Read locks never conflict with each other: a conflict is found by
// asking the kernel (F_OFD_GETLK with a write lock) whether another open
// file description holds a byte: lockSharedBase+i for each permission we
// want (someone refuses to share it), lockPermBase+i for each one we do
// not share (someone has it). Locks are taken first and checked after, so
// of two users racing to open, at least one sees the other.
//
// OFD locks belong to the open file description, not to the process: two
// opens of one file in this process conflict just as two processes do,
// and a descriptor's locks go away when its last duplicate is closed.
const (
	lockPermBase   = 100
	lockSharedBase = 200
)

// Permission bits, numbered as QEMU numbers them (BLK_PERM_*): bit i
// locks bytes lockPermBase+i and lockSharedBase+i. QEMU 6.1 and older
// had a fifth bit (graph modification, bytes 104 and 204) that 7.2 no
// longer has: like 7.2, we neither take nor check it (no open of ours
// wants that permission, so an old QEMU that refuses to share it is no
// conflict).
const (
	permConsistentRead = 1 << iota
	permWrite
	permWriteUnchanged
	permResize
	permBits = 4
)

var permNames = [permBits]string{"consistent read", "write", "write unchanged", "resize"}

// lockMode is what a user of a file has (perm) and refuses to share
// (unshared), as permission bit sets.
type lockMode struct{ perm, unshared uint8 }

// The modes Open takes, as qemu-img, qemu-io and qemu-nbd take them on a
// qcow2 file (seen in /proc/locks):
//   - a writer reads consistently, writes and resizes, and shares neither
//     writing nor resizing: a second writer, or a reader that wants a
//     consistent view, is refused;
//   - a reader (a read-only open, and every backing file) reads
//     consistently and does not share writing or resizing either: readers
//     coexist, and a writer is refused while any reader is there;
//   - a forced-share reader (qemu-img -U) only marks that it reads and
//     shares everything: it neither refuses nor is refused by a writer.
var (
	lockNone   = lockMode{}
	lockWriter = lockMode{perm: permConsistentRead | permWrite | permResize, unshared: permWrite | permResize}
	lockReader = lockMode{perm: permConsistentRead, unshared: permWrite | permResize}
	lockShared = lockMode{perm: permConsistentRead}
)

// lockModeFor is the mode an open with opts takes on its top file.
func lockModeFor(opts Options) lockMode {
	switch {
	case opts.NoLock:
		return lockNone
	case !opts.ReadOnly:
		return lockWriter
	case opts.ForceShare:
		return lockShared
	}
	return lockReader
}

// backingLockMode is the mode for a backing file opened under opts
// (writable only for commit): a reader's, shared as the top is (-U
// reaches the whole chain, as in QEMU).
func backingLockMode(opts Options, writable bool) lockMode {
	o := opts
	o.ReadOnly = !writable
	if writable {
		o.ForceShare = false
	}
	return lockModeFor(o)
}

// checkLockOptions refuses option combinations QEMU refuses too.
func checkLockOptions(opts Options) error {
	if opts.ForceShare && !opts.ReadOnly {
		return errorf(ErrInvalid, "force-share can only be used with read-only images")
	}
	return nil
}

// bytes lists the lock bytes m holds, as a bit set over the permission
// bytes (low half) and the unshared bytes (high half).
func (m lockMode) bytes() uint16 { return uint16(m.perm) | uint16(m.unshared)<<permBits }

// lockByteOffset is the file offset of bit j of a bytes() set.
func lockByteOffset(j int) int64 {
	if j < permBits {
		return lockPermBase + int64(j)
	}
	return lockSharedBase + int64(j-permBits)
}

// lockUnsupported reports errors that mean the file system (or kernel)
// has no OFD locks: then the file is used without them, silently (QEMU's
// locking=auto does so when the kernel lacks them). A conflict is never
// one of these.
func lockUnsupported(err error) bool {
	return errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOLCK) ||
		errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS)
}

// lockConflict reports the errors F_OFD_SETLK gives when another open
// file description holds a conflicting lock.
func lockConflict(err error) bool {
	return errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES)
}

func ofdLock(fd int, typ int16, off, n int64) error {
	lk := unix.Flock_t{Type: typ, Whence: 0, Start: off, Len: n}
	return unix.FcntlFlock(uintptr(fd), unix.F_OFD_SETLK, &lk)
}

// ofdHeldElsewhere reports whether another open file description holds a
// lock on byte off that a write lock would conflict with.
func ofdHeldElsewhere(fd int, off int64) (bool, error) {
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: off, Len: 1}
	if err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_GETLK, &lk); err != nil {
		return false, err
	}
	return lk.Type != unix.F_UNLCK, nil
}

// setLock makes the lock bytes that fd's open file description holds go
// from held to want: it locks what want adds, checks want against every
// other user of the file, and unlocks what want drops. On a conflict (an
// ErrLocked error) or another failure the bytes it added are unlocked
// again and held stays. It returns the mode now held: lockNone when the
// file system has no OFD locks (then nothing is locked, and nothing
// could be checked).
func setLock(fd int, held, want lockMode) (lockMode, error) {
	var added uint16
	undo := func() { unlockBytes(fd, added) }
	have, need := held.bytes(), want.bytes()
	if need&^have == 0 {
		// Only dropping bytes: nothing to check (whoever coexists with
		// the stronger lock coexists with this one), nothing can fail.
		unlockBytes(fd, have&^need)
		return want, nil
	}
	for j := range 2 * permBits {
		if need&(1<<j) == 0 || have&(1<<j) != 0 {
			continue
		}
		err := ofdLock(fd, unix.F_RDLCK, lockByteOffset(j), 1)
		switch {
		case err == nil:
			added |= 1 << j
			continue
		case lockConflict(err):
			// Only a write lock on the byte (not QEMU's) refuses a read lock.
			undo()
			return held, errorf(ErrLocked, "byte %d is write-locked by another user of the image", lockByteOffset(j))
		case lockUnsupported(err) && held == lockNone:
			undo()
			return lockNone, nil
		}
		undo()
		return held, fmt.Errorf("locking byte %d: %w", lockByteOffset(j), err)
	}
	if err := checkLock(fd, want); err != nil {
		undo()
		return held, err
	}
	unlockBytes(fd, have&^need)
	return want, nil
}

// unlockBytes unlocks the lock bytes of a bytes() set. Unlocking cannot
// conflict; a failure would leave a stricter lock than needed, never a
// weaker one, so it is not reported.
func unlockBytes(fd int, set uint16) {
	for j := range 2 * permBits {
		if set&(1<<j) != 0 {
			_ = ofdLock(fd, unix.F_UNLCK, lockByteOffset(j), 1)
		}
	}
}

// checkLock looks for another user of the file that m conflicts with.
func checkLock(fd int, m lockMode) error {
	for i := range permBits {
		bit := uint8(1) << i
		if m.perm&bit != 0 {
			held, err := ofdHeldElsewhere(fd, lockSharedBase+int64(i))
			if err != nil {
				return fmt.Errorf("testing lock byte %d: %w", lockSharedBase+i, err)
			}
			if held {
				return errorf(ErrLocked, "failed to get %q lock: another user of the image does not share it (another process, or another open of it in this one)", permNames[i])
			}
		}
	}
	for i := range permBits {
		bit := uint8(1) << i
		if m.unshared&bit != 0 {
			held, err := ofdHeldElsewhere(fd, lockPermBase+int64(i))
			if err != nil {
				return fmt.Errorf("testing lock byte %d: %w", lockPermBase+i, err)
			}
			if held {
				return errorf(ErrLocked, "failed to get shared %q lock: another user of the image has %s permission (another process, or another open of it in this one)", permNames[i], permNames[i])
			}
		}
	}
	return nil
}

// setLock makes o's descriptor hold mode (an open takes it before it
// reads or writes anything a conflicting user could be changing). The
// lock lives until Close.
func (o *osFile) setLock(mode lockMode) error {
	held, err := setLock(int(o.f.Fd()), o.lock, mode)
	o.lock = held
	return err
}

// FileLock is an image lock held on a descriptor of its own (LockFile).
type FileLock struct{ f *osFile }

// LockFile takes on the file at path the lock an Open with opts takes on
// an image file (ReadOnly, ForceShare and NoLock count), for images the
// engine does not open itself: a raw image another component serves, say.
// It returns an error wrapping ErrLocked when another user of the file
// conflicts. The lock is held until Close.
func LockFile(path string, opts Options) (*FileLock, error) {
	if err := checkLockOptions(opts); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	fh, err := os.Open(path) // read locks need only a readable descriptor
	if err != nil {
		return nil, err
	}
	f := &osFile{f: fh}
	if err := f.setLock(lockModeFor(opts)); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &FileLock{f: f}, nil
}

// Close releases the lock.
func (l *FileLock) Close() error { return l.f.Close() }

// lockWhole takes an exclusive OFD lock on the whole file: a journal of
// a writable image. QEMU never opens journals; the lock keeps two writers
// of this engine apart even if they got past the image's lock (one of
// them with NoLock).
func (o *osFile) lockWhole() error {
	err := ofdLock(int(o.f.Fd()), unix.F_WRLCK, 0, 0)
	switch {
	case err == nil:
		o.whole = true
		return nil
	case lockUnsupported(err):
		return nil
	case lockConflict(err):
		return errorf(ErrLocked, "the write journal %s is in use by another writer", o.f.Name())
	}
	return fmt.Errorf("locking the write journal %s: %w", o.f.Name(), err)
}

// releaseLocks unlocks what o holds, just before it is closed. Closing
// alone releases OFD locks only once every duplicate of the descriptor is
// closed, and a child this process forks (exec.Command, from any
// goroutine) holds duplicates of all its descriptors until it execs: an
// image closed at that moment would stay locked a little longer, and an
// open of it right after the close would fail.
func (o *osFile) releaseLocks() {
	fd := int(o.f.Fd())
	unlockBytes(fd, o.lock.bytes())
	o.lock = lockNone
	if o.whole {
		_ = ofdLock(fd, unix.F_UNLCK, 0, 0)
		o.whole = false
	}
}
