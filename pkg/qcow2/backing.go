package qcow2

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// openBacking opens the backing file named inside image `child` under the
// caller's policy. Backing files are opened read-only.
func openBacking(child, name, format string, opts Options, depth int) (Disk, error) {
	return openBackingMode(child, name, format, opts, depth, false)
}

// openBackingMode is openBacking, or with writable the same for writing
// (commit): the policy applies alike. The file joins the chain of opts
// (or a new one under child) and is locked as a reader (a writer with
// writable) before anything reads it.
func openBackingMode(child, name, format string, opts Options, depth int, writable bool) (Disk, error) {
	ch, err := chainFor(child, opts)
	if err != nil {
		return nil, err
	}
	flag := os.O_RDONLY
	if writable {
		flag = os.O_RDWR
	}
	fh, path, err := resolveBackingFlag(child, name, opts.Backing, flag)
	if err != nil {
		return nil, err
	}
	if err := ch.admit(child, name, path, fh); err != nil {
		fh.Close()
		return nil, err
	}
	f := &osFile{f: fh, canPunch: true}
	if err := f.setLock(backingLockMode(opts, writable)); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	opts.chain = ch
	return openBackingFile(child, f, path, format, opts, depth, writable)
}

// openBackingFile opens the backing file f (at path, already locked) of
// image child as format ("" probes it). It takes ownership of f and
// closes it on error.
func openBackingFile(child string, f *osFile, path, format string, opts Options, depth int, writable bool) (Disk, error) {
	var err error
	if format == "" {
		if format, err = probeFile(f); err != nil {
			f.Close()
			return nil, err
		}
	}
	switch format {
	case "raw":
		return newRaw(path, f, !writable)
	case "qcow2":
		bopts := opts
		bopts.ReadOnly = !writable
		bopts.NoBacking = false
		if writable {
			bopts.ForceShare = false
		}
		// A backing file has no journal of its own here: one with
		// journal-only mappings is refused (ErrJournalPending).
		bopts.Journal, bopts.journalFile, bopts.journalPath = false, nil, ""
		if bopts.Backing.Root == "" && !bopts.Backing.AllowAnyPath && !bopts.Backing.Exact {
			// Deeper layers stay confined to the top image's root.
			bopts.Backing.Root = filepath.Dir(absPath(child))
		}
		img, err := openFile(f, path, bopts, depth)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return img, nil
	}
	f.Close()
	return nil, fmt.Errorf("%w: backing file format %q", ErrUnsupported, format)
}

// resolveBackingFlag applies the policy to a backing file name and opens it
// with flag. Relative names resolve against the directory of the image
// naming them, as in QEMU. Under a Root policy the file is opened
// through os.Root, which refuses "..", absolute paths and symlinks that
// leave the root; under an Exact one only a listed file opens
// (backing_policy.go). Confined opens do not block on a FIFO (O_NONBLOCK;
// admit then refuses anything but a regular file).
func resolveBackingFlag(child, name string, pol BackingPolicy, flag int) (*os.File, string, error) {
	if name == "" || strings.ContainsRune(name, 0) {
		return nil, "", fmt.Errorf("%w: empty or malformed backing file name", ErrInvalid)
	}
	if hasProtocolPrefix(name) {
		return nil, "", fmt.Errorf("%w: backing file %q uses a protocol or json: prefix", ErrPolicy, name)
	}
	if pol.Standalone {
		return nil, "", fmt.Errorf("%w: backing file %q: the image must stand alone", ErrPolicy, name)
	}
	path := name
	if !filepath.IsAbs(name) {
		path = filepath.Join(filepath.Dir(child), name)
	}
	switch {
	case pol.AllowAnyPath:
		f, err := os.OpenFile(path, flag, 0)
		return f, path, err
	case pol.Exact:
		f, err := openExact(path, pol, flag)
		return f, path, err
	}
	root := pol.Root
	if root == "" {
		root = filepath.Dir(absPath(child))
	}
	root = absPath(root)
	rel, err := filepath.Rel(root, absPath(path))
	if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return nil, "", fmt.Errorf("%w: backing file %q is outside %s", ErrPolicy, name, root)
	}
	r, err := os.OpenRoot(root)
	if err != nil {
		return nil, "", err
	}
	defer r.Close()
	f, err := r.OpenFile(rel, flag|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, "", fmt.Errorf("%w: backing file %q: %v", ErrPolicy, name, err)
	}
	return f, filepath.Join(root, rel), nil
}

// hasProtocolPrefix matches QEMU's "protocol:" filenames (json:, nbd:,
// http:, ...): a prefix of letters, digits, '+', '-' or '.' before a colon,
// with no slash before it.
func hasProtocolPrefix(name string) bool {
	i := strings.IndexByte(name, ':')
	if i <= 0 {
		return false
	}
	for _, c := range name[:i] {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '+' || c == '-' || c == '.' || c == '_') {
			return false
		}
	}
	return true
}

func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}
