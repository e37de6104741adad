package main

import (
	"bytes"
	"fmt"
	"io"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2/convert"
	"github.com/spf13/cobra"
)

func newImgCompareCmd() *cobra.Command {
	var c compareCmd
	cmd := &cobra.Command{
		Use:   "compare [-q] [-f fmt] [-F fmt] [-s] [-U] filename1 filename2",
		Short: "Check whether two images have the same content",
		Long: `Compare the guest-visible content of two images (each read through its
backing chain), like qemu-img compare. Exit status: 0 the images are
identical, 1 they differ, 2 an image could not be opened, 4 a read failed.
The first differing 512-byte sector is reported. Images of different
sizes are identical when the larger one reads as zeros past the end of the
smaller (a warning is printed); -s (strict) fails on a size difference and
on any difference in allocation state.
` + imgLockNote + imgPolicyNote,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 2 {
				return failf("Expecting two image file names")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.run(cmd, args[0], args[1])
		},
	}
	f := cmd.Flags()
	f.StringVarP(&c.fmt1, "format", "f", "", "format of filename1 (qcow2 or raw); probed when empty")
	f.StringVarP(&c.fmt2, "backing-format", "F", "", "format of filename2 (qcow2 or raw); probed when empty")
	f.BoolVarP(&c.strict, "strict", "s", false, "strict mode: sizes and allocation must match too")
	f.BoolVarP(&c.quiet, "quiet", "q", false, "print nothing; only the exit status tells")
	addForceShareFlag(f, &c.share)
	return cmd
}

type compareCmd struct {
	fmt1, fmt2           string
	strict, quiet, share bool
}

// compareChunk is qemu-img compare's IO_BUF_SIZE.
const compareChunk = 2 << 20

func (c *compareCmd) run(cmd *cobra.Command, name1, name2 string) error {
	for _, f := range []string{c.fmt1, c.fmt2} {
		if err := checkFormat(f); err != nil {
			return &exitError{Code: 2, Msg: err.(*exitError).Msg}
		}
	}
	d1, err := qcow2.OpenDisk(name1, c.fmt1, readOptions(false, c.share))
	if err != nil {
		return &exitError{Code: 2, Msg: fmt.Sprintf("Could not open '%s': %v", name1, err)}
	}
	defer d1.Close()
	d2, err := qcow2.OpenDisk(name2, c.fmt2, readOptions(false, c.share))
	if err != nil {
		return &exitError{Code: 2, Msg: fmt.Sprintf("Could not open '%s': %v", name2, err)}
	}
	defer d2.Close()
	w := cmd.OutOrStdout()
	say := func(format string, a ...any) {
		if !c.quiet {
			fmt.Fprintf(w, format, a...)
		}
	}
	code, err := compareDisks(d1, d2, name1, name2, c.strict, say)
	if err != nil {
		return err
	}
	if code != 0 {
		return exitWith(code)
	}
	say("Images are identical.\n")
	return nil
}

// blockStatus is what strict mode compares (QEMU's block status flags).
type blockStatus struct{ data, zero, allocated, offsetValid bool }

func statusOf(e qcow2.Extent) blockStatus {
	return blockStatus{e.Data, e.Zero, e.Present, e.Offset >= 0}
}

// extentAt returns the extent of exts holding off and its end; exts covers
// the disk in order, *i is where the search starts.
func extentAt(exts []qcow2.Extent, i *int, off int64) (qcow2.Extent, int64) {
	for *i < len(exts) && exts[*i].Start+exts[*i].Length <= off {
		*i++
	}
	if *i == len(exts) {
		return qcow2.Extent{Start: off, Length: 1 << 62, Zero: true, Offset: -1}, 1 << 62
	}
	e := exts[*i]
	return e, e.Start + e.Length
}

// compareDisks does the work of compare: it returns 0 (identical), 1
// (different, reported through say) or an error carrying exit status 4.
func compareDisks(d1, d2 qcow2.Disk, name1, name2 string, strict bool, say func(string, ...any)) (int, error) {
	size1, size2 := d1.Size(), d2.Size()
	common := min(size1, size2)
	if strict && size1 != size2 {
		say("Strict mode: Image size mismatch!\n")
		return 1, nil
	}
	ext1, err := d1.Map(0, size1)
	if err != nil {
		return 0, &exitError{Code: 3, Msg: fmt.Sprintf("Sector allocation test failed for %s", name1)}
	}
	ext2, err := d2.Map(0, size2)
	if err != nil {
		return 0, &exitError{Code: 3, Msg: fmt.Sprintf("Sector allocation test failed for %s", name2)}
	}
	buf1, buf2 := make([]byte, compareChunk), make([]byte, compareChunk)
	read := func(d qcow2.Disk, name string, p []byte, off int64) error {
		if _, err := d.ReadAt(p, off); err != nil && err != io.EOF {
			return &exitError{Code: 4, Msg: fmt.Sprintf("Error while reading offset %d of %s: %v", off, name, err)}
		}
		return nil
	}
	var i1, i2 int
	for off := int64(0); off < common; {
		e1, end1 := extentAt(ext1, &i1, off)
		e2, end2 := extentAt(ext2, &i2, off)
		n := min(end1, end2, common) - off
		if strict && statusOf(e1) != statusOf(e2) {
			say("Strict mode: Offset %d block status mismatch!\n", off)
			return 1, nil
		}
		n = min(n, compareChunk)
		if e1.Zero && !e1.Data && e2.Zero && !e2.Data {
			off += n
			continue
		}
		p1, p2 := buf1[:n], buf2[:n]
		if err := read(d1, name1, p1, off); err != nil {
			return 0, err
		}
		if err := read(d2, name2, p2, off); err != nil {
			return 0, err
		}
		if at := firstDiffSector(p1, p2); at >= 0 {
			say("Content mismatch at offset %d!\n", off+at)
			return 1, nil
		}
		off += n
	}
	if size1 == size2 {
		return 0, nil
	}
	say("Warning: Image size mismatch!\n")
	over, name, exts, size := d1, name1, ext1, size1
	if size2 > size1 {
		over, name, exts, size = d2, name2, ext2, size2
	}
	var i int
	for off := common; off < size; {
		e, end := extentAt(exts, &i, off)
		n := min(end, size, off+compareChunk) - off
		if !(e.Zero && !e.Data) {
			p := buf1[:n]
			if err := read(over, name, p, off); err != nil {
				return 0, err
			}
			if at := firstDiffSector(p, nil); at >= 0 {
				say("Content mismatch at offset %d!\n", off+at)
				return 1, nil
			}
		}
		off += n
	}
	return 0, nil
}

// firstDiffSector returns the offset of the first 512-byte sector in which
// a and b differ (b nil: in which a is not zero), -1 if there is none.
func firstDiffSector(a, b []byte) int64 {
	for i := 0; i < len(a); i += 512 {
		j := min(i+512, len(a))
		if b == nil {
			if !convert.IsZero(a[i:j]) {
				return int64(i)
			}
		} else if !bytes.Equal(a[i:j], b[i:j]) {
			return int64(i)
		}
	}
	return -1
}
