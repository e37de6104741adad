package main

import (
	"bytes"
	"io"
	"sort"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// targetOpts merges -B/-F into the -o backing options and checks them
// and -n.
func (c *convertCmd) targetOpts(o *createOpts) error {
	if c.noCreate && c.compress {
		return failf("Compression (-c) is not supported with -n")
	}
	if c.backing != "" && o.backingFile != "" && c.backing != o.backingFile {
		return failf("-B and -o backing_file name different backing files")
	}
	if c.backingFmt != "" && o.backingFmt != "" && c.backingFmt != o.backingFmt {
		return failf("-F and -o backing_fmt name different formats")
	}
	if c.backing != "" {
		o.backingFile = c.backing
	}
	if c.backingFmt != "" {
		o.backingFmt = c.backingFmt
	}
	switch {
	case o.backingFile == "" && o.backingFmt != "":
		return failf("A backing format was given without a backing file (-B)")
	case o.backingFile == "":
		return nil
	case c.dstFmt != "qcow2":
		return failf("Backing file not supported for file format '%s'", c.dstFmt)
	case o.backingFmt == "":
		return failf("Use of backing file requires explicit backing format")
	case c.noCreate:
		return failf("-B cannot be used with -n: an existing output keeps its own backing file")
	case c.compress:
		return failf("Compression with a backing file (-B) is not supported")
	}
	return checkFormat(o.backingFmt)
}

// copyDiff writes to out (opened over its backing file) every cluster
// whose content in the source differs from what out reads now, i.e. from
// its backing file: clusters of zeros become zero clusters.
func copyDiff(in io.ReaderAt, out *qcow2.Image, exts []qcow2.Extent, bar *progress) error {
	cs := out.ClusterSize()
	chunk := ceilDiv64(2<<20, cs) * cs
	src := make([]byte, chunk)
	cur := make([]byte, chunk)
	size := out.Size()
	for off := int64(0); off < size; off += chunk {
		n := min(chunk, size-off)
		if err := readExtents(in, exts, src[:n], off); err != nil {
			return err
		}
		if _, err := out.ReadAt(cur[:n], off); err != nil {
			return failf("error while reading the backing file at byte %d: %v", off, err)
		}
		for i := int64(0); i < n; i += cs {
			m := min(cs, n-i)
			s := src[i : i+m]
			if bytes.Equal(s, cur[i:i+m]) {
				continue
			}
			var err error
			if isZero(s) {
				err = out.WriteZeroes(off+i, m, false)
			} else {
				_, err = out.WriteAt(s, off+i)
			}
			if err != nil {
				return failf("error while writing at byte %d: %v", off+i, err)
			}
		}
		bar.add(n)
	}
	return nil
}

// copyAll writes everything the source reads into an existing output,
// zeros included (its old content must not show through).
func copyAll(in io.ReaderAt, out writeTarget, exts []qcow2.Extent, bar *progress) error {
	buf := make([]byte, 2<<20)
	for _, e := range exts {
		for off, end := e.Start, e.Start+e.Length; off < end; {
			n := min(end-off, int64(len(buf)))
			p := buf[:n]
			var err error
			if img, ok := out.(*qcow2.Image); ok && e.Zero && !e.Data {
				err = img.WriteZeroes(off, n, true)
			} else {
				if err := readExtents(in, exts, p, off); err != nil {
					return err
				}
				_, err = out.WriteAt(p, off)
			}
			if err != nil {
				return failf("error while writing at byte %d: %v", off, err)
			}
			bar.add(n)
			off += n
		}
	}
	return nil
}

// readExtents reads [off, off+len(p)) of the source, not reading ranges
// its map says are zeros.
func readExtents(in io.ReaderAt, exts []qcow2.Extent, p []byte, off int64) error {
	end := off + int64(len(p))
	first := sort.Search(len(exts), func(i int) bool { return exts[i].Start+exts[i].Length > off })
	for _, e := range exts[first:] {
		if e.Start >= end {
			break
		}
		a, b := max(off, e.Start), min(end, e.Start+e.Length)
		if a >= b {
			continue
		}
		q := p[a-off : b-off]
		if e.Zero && !e.Data {
			clear(q)
			continue
		}
		if _, err := in.ReadAt(q, a); err != nil && err != io.EOF {
			return failf("error while reading at byte %d: %v", a, err)
		}
	}
	return nil
}
