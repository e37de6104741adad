package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

func newImgCreateCmd() *cobra.Command {
	var (
		format, backing, backingFmt string
		opts                        []string
		unsafe, quiet               bool
	)
	cmd := &cobra.Command{
		Use:   "create [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] [-o options] filename [size]",
		Short: "Create a new qcow2 or raw image",
		Long: `Create a new image, like qemu-img create. fmt is qcow2 or raw (default raw).

size takes the suffixes k, M, G, T, P and E (binary multiples); a qcow2 image
with a backing file and no size gets the backing file's size.

-o options (qcow2): size, compat (1.1|0.10), backing_file, backing_fmt,
cluster_size, refcount_bits, lazy_refcounts (on|off), preallocation
(off|metadata|falloc|full), compression_type (zlib|zstd), extended_l2
(on|off; on needs compat 1.1 and cluster_size >= 16k).
-o options (raw): size, preallocation (off|falloc|full). -o help lists them.
-u does not open the backing file (its format must then be given with -F).
An existing file is overwritten, as with qemu-img, unless another program
has it open (its image lock refuses a writer: docs/engine.md, "Image locks").
` + imgPolicyNote,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := createCmd{format: format, backing: backing, backingFmt: backingFmt,
				opts: opts, unsafe: unsafe, quiet: quiet}
			return c.run(cmd, args)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&format, "format", "f", "raw", "image format: qcow2 or raw")
	f.StringVarP(&backing, "backing", "b", "", "backing file (stored as given; relative names resolve against the new image's directory)")
	f.StringVarP(&backingFmt, "backing-format", "F", "", "format of the backing file: qcow2 or raw")
	f.StringArrayVarP(&opts, "options", "o", nil, "comma-separated format options (-o help lists them)")
	f.BoolVarP(&unsafe, "unsafe", "u", false, "do not open the backing file")
	f.BoolVarP(&quiet, "quiet", "q", false, "print nothing on success")
	return cmd
}

type createCmd struct {
	format, backing, backingFmt string
	opts                        []string
	unsafe, quiet               bool
}

func (c *createCmd) run(cmd *cobra.Command, args []string) error {
	if err := checkFormat(c.format); err != nil {
		return err
	}
	if c.format == "" {
		c.format = "raw"
	}
	if isHelpOpt(c.opts) {
		fmt.Fprint(cmd.OutOrStdout(), optHelp[c.format])
		return nil
	}
	filename := args[0]
	fileErr := func(format string, a ...any) error {
		return failf("%s: %s", filename, fmt.Sprintf(format, a...))
	}
	o, err := parseCreateOpts(c.format, c.opts)
	if err != nil {
		return fileErr("%v", err)
	}
	if c.backing != "" {
		if c.format != "qcow2" {
			return fileErr("Backing file not supported for file format '%s'", c.format)
		}
		o.backingFile = c.backing
	}
	if c.backingFmt != "" {
		if err := checkFormat(c.backingFmt); err != nil {
			return err
		}
		o.backingFmt = c.backingFmt
	}
	if o.backingFile != "" && o.backingFmt == "" {
		return fileErr("Backing file specified without backing format")
	}
	if o.backingFile != "" && o.prealloc != qcow2.PreallocOff && !o.extendedL2 {
		return fileErr("Backing file and preallocation can only be used at the same time if extended_l2 is on")
	}

	_, haveSize := o.set["size"]
	size := o.size
	if len(args) == 2 {
		n, warn, err := parseSize(args[1])
		if errors.Is(err, errSizeRange) {
			return failf("Invalid image size specified. Must be between 0 and 9223372036854775807.")
		}
		if err != nil {
			return failf("Invalid image size specified. You may use k, M, G, T, P or E suffixes for\n" +
				errPrefix + "kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.")
		}
		if warn != "" {
			fmt.Fprintln(cmd.ErrOrStderr(), errPrefix+"warning: "+warn)
		}
		size, haveSize = n, true
	}
	if o.backingFile != "" && !c.unsafe {
		path := pathCombine(filename, o.backingFile)
		// Force-share, as qemu-img create: only the size is read, and
		// the backing file may be an image a writer has open.
		d, err := qcow2.OpenDisk(path, o.backingFmt, readOptions(true, true))
		if err != nil {
			return fileErr("Could not open '%s': %v\nCould not open backing image.", path, err)
		}
		if !haveSize {
			size, haveSize = d.Size(), true
		}
		d.Close()
	}
	if !haveSize {
		return fileErr("Image creation needs a size parameter")
	}
	if !c.quiet {
		fmt.Fprintln(cmd.OutOrStdout(), o.formattingLine(filename, c.format, size))
	}
	if err := o.extendedL2Err(); err != nil {
		return fileErr("%v", err)
	}
	if err := removeExisting(filename); err != nil {
		return fileErr("%v", err)
	}
	if c.format == "raw" {
		err = createRaw(filename, size, o.prealloc)
	} else {
		err = qcow2.Create(filename, o.qcow2Options(size, c.unsafe))
	}
	if err != nil {
		return fileErr("%v", err)
	}
	return nil
}

// removeExisting deletes a regular file in the way of a new image: qemu-img
// create and convert overwrite their target. Anything else is left alone
// and the create fails on it, and so is an image someone has open (it
// holds an image lock a writer's conflicts with: deleting an image a
// server writes would lose what it writes from then on), as qemu-img
// refuses it.
func removeExisting(path string) error {
	st, err := os.Lstat(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s exists and is not a regular file", path)
	}
	lk, err := qcow2.LockFile(path, qcow2.Options{})
	if err != nil {
		return err
	}
	defer lk.Close()
	return os.Remove(path)
}

// createRaw makes a raw image: a sparse file of size bytes, with its
// blocks reserved (falloc) or written with zeros (full) on request.
func createRaw(path string, size int64, prealloc string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	err = fillRaw(f, size, prealloc)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
	}
	return err
}

func fillRaw(f *os.File, size int64, prealloc string) error {
	switch prealloc {
	case qcow2.PreallocFalloc:
		if size > 0 {
			if err := unix.Fallocate(int(f.Fd()), 0, 0, size); err != nil {
				return fmt.Errorf("Could not preallocate data for the new file: %w", err)
			}
		}
	case qcow2.PreallocFull:
		buf := make([]byte, min(size, 1<<20))
		for off := int64(0); off < size; {
			n := min(int64(len(buf)), size-off)
			if _, err := f.WriteAt(buf[:n], off); err != nil {
				return err
			}
			off += n
		}
	}
	if err := f.Truncate(size); err != nil {
		return err
	}
	return f.Sync()
}
