package main

import (
	"archive/tar"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// writeTree writes the directory tree under root to w as a tar stream whose
// names are relative to root ("usr/bin/x", directories with a trailing
// slash). The stream depends only on the tree, never on when or by whom it
// was made: entries come in lexical order (WalkDir's), every time is epoch,
// and owners are numeric only (no user names looked up on this host).
// Owners and modes, setuid bits included, are kept as dpkg-deb extracted
// them. A file with several hard links is stored once and linked, as a
// package ships it (mke2fs and mkfs.ext4 are one file).
func writeTree(w io.Writer, root string, epoch time.Time) error {
	tw := tar.NewWriter(w)
	seen := map[[2]uint64]string{} // (dev, inode) -> first name
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil || rel == "." {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		hdr, err := treeHeader(path, rel, fi, epoch)
		if err != nil {
			return err
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && hdr.Typeflag == tar.TypeReg && st.Nlink > 1 {
			key := [2]uint64{uint64(st.Dev), st.Ino}
			if first, ok := seen[key]; ok {
				hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
				return tw.WriteHeader(hdr)
			}
			seen[key] = hdr.Name
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if hdr.Typeflag == tar.TypeReg {
			return copyFile(tw, path, hdr.Size)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("tar %s: %w", root, err)
	}
	return tw.Close()
}

// treeHeader is the tar header of one entry of the tree. Only directories,
// regular files and symbolic links belong in an image root made from
// packages; anything else (a device node, a socket) means the root is not
// what the build made, and is refused rather than copied.
func treeHeader(path, rel string, fi fs.FileInfo, epoch time.Time) (*tar.Header, error) {
	link := ""
	if fi.Mode()&fs.ModeSymlink != 0 {
		var err error
		if link, err = os.Readlink(path); err != nil {
			return nil, err
		}
	}
	hdr, err := tar.FileInfoHeader(fi, link)
	if err != nil {
		return nil, err
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		rel += "/"
	case tar.TypeReg, tar.TypeSymlink:
	default:
		return nil, fmt.Errorf("%s: unsupported file type %v", rel, fi.Mode().Type())
	}
	hdr.Name = filepath.ToSlash(rel)
	hdr.ModTime = epoch
	hdr.AccessTime, hdr.ChangeTime = time.Time{}, time.Time{}
	hdr.Uname, hdr.Gname = "", ""
	hdr.Format = tar.FormatPAX // long names and large ids without GNU extensions
	return hdr, nil
}

// copyFile copies exactly size bytes of the file at path: a file that grew
// or shrank since its header was written would corrupt the stream, so that
// is an error instead.
func copyFile(w io.Writer, path string, size int64) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	n, err := io.Copy(w, io.LimitReader(f, size))
	if err == nil && n != size {
		err = fmt.Errorf("%s: changed while being archived", path)
	}
	return err
}
