package qcow2

import (
	"fmt"
	"os"
	"syscall"
)

// BackingPolicy decides whether a file name stored in an image may be opened.
// The zero value allows only files inside the directory of the top image.
//
// Modes, strictest first: Standalone (no file at all), Exact (exactly the
// files the caller lists, compared by identity), Root (any file under a
// directory tree), AllowAnyPath (anything). Whatever the mode, a file that
// is already a layer of the chain (a loop) or a write journal is refused
// (open_chain.go).
type BackingPolicy struct {
	// Root confines backing files to this directory tree (resolved with
	// os.Root, so "..", absolute paths elsewhere and escaping symlinks are
	// refused). Empty means the directory holding the top image.
	Root string
	// AllowAnyPath lifts the confinement: any absolute or relative path is
	// opened (the `img` CLI, on an operator's explicit request).
	AllowAnyPath bool
	// AllowDataFile permits images with an external data file.
	AllowDataFile bool

	// Exact allows exactly the files in Files as backing files, at any
	// depth of the chain, and nothing else. A name stored in an image is
	// only looked up (stat) to learn which file it means; it is allowed
	// when that file is one of Files by device and inode, and then the
	// caller's own path from Files is what gets opened (and checked to be
	// that same file once open). So symlinks, "..", hard links and
	// /proc/self/fd names reach nothing the caller did not list. With
	// Files empty no backing file is allowed. It is the policy for a
	// volume: its own layers and golden image, never another volume's.
	Exact bool
	// Files are the files Exact allows (paths the caller trusts; relative
	// ones resolve against the working directory). Setting Files without
	// Exact is refused, so that a forgotten flag cannot fall back to Root.
	Files []string

	// Standalone refuses any image that names a backing file (even when
	// opened with NoBacking) or uses an external data file: the policy
	// for an image imported from outside, which must stand alone.
	Standalone bool
}

// validate refuses contradictory policies: each mode says what the caller
// means, and a combination would leave one of them silently ignored.
func (p BackingPolicy) validate() error {
	bad := func(why string) error {
		return fmt.Errorf("%w: the policy %s", ErrPolicy, why)
	}
	switch {
	case p.Standalone && (p.Exact || len(p.Files) > 0 || p.AllowAnyPath || p.AllowDataFile || p.Root != ""):
		return bad("sets Standalone together with a mode that allows files")
	case p.Exact && p.AllowAnyPath:
		return bad("sets both Exact and AllowAnyPath")
	case p.Exact && p.Root != "":
		return bad("sets both Exact and Root")
	case len(p.Files) > 0 && !p.Exact:
		return bad("lists Files without Exact")
	}
	return nil
}

// openExact opens the backing file at path (the name an image stores,
// already joined to the directory of that image) under an Exact policy:
// by the caller's path for the same file, never by the image's name.
func openExact(path string, pol BackingPolicy, flag int) (*os.File, error) {
	named, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("%w: backing file %s: %v", ErrPolicy, path, err)
	}
	want, ok := statFileID(named)
	if !ok {
		return nil, fmt.Errorf("%w: backing file %s has no device and inode to compare", ErrPolicy, path)
	}
	for _, allowed := range pol.Files {
		st, err := os.Stat(allowed)
		if err != nil {
			continue // a listed file that is gone allows nothing
		}
		if id, ok := statFileID(st); !ok || id != want {
			continue
		}
		f, err := os.OpenFile(allowed, flag|syscall.O_NONBLOCK, 0)
		if err != nil {
			return nil, err
		}
		// The caller's path may have been replaced since the stat: what
		// is open must be the file the image named.
		if got, ok := openFileID(f); !ok || got != want {
			f.Close()
			return nil, fmt.Errorf("%w: %s changed while it was being opened", ErrPolicy, allowed)
		}
		return f, nil
	}
	return nil, fmt.Errorf("%w: backing file %s is not one of the %d files the policy allows", ErrPolicy, path, len(pol.Files))
}
