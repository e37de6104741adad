package main

import (
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
	"github.com/spf13/cobra"
)

func newImgRebaseCmd() *cobra.Command {
	var (
		format, backing, backingFmt string
		unsafe, quiet, progress     bool
	)
	cmd := &cobra.Command{
		Use:   "rebase [-q] [-p] [-u] [-f fmt] -b backing_file [-F backing_fmt] filename",
		Short: "Change the backing file of a qcow2 image",
		Long: `Change the backing file of a qcow2 image to backing_file, like qemu-img
rebase. -b "" removes the backing file. backing_file is stored as given and,
when relative, is taken relative to the image's directory; -F names its
format (qcow2 or raw) and is required unless -b is "".

Safe mode (the default) copies into the image every cluster it leaves
unallocated whose content differs between the old and the new backing
chain, so that the guest sees the same data afterwards; the old backing
chain must be readable. -u (unsafe) only rewrites the backing file name and
format, for when the backing file was moved or renamed.
` + imgPolicyNote,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("backing") {
				return failf("Must specify backing file (-b) or use unsafe mode (-u)")
			}
			return runRebase(args[0], format, backing, backingFmt, unsafe)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&format, "format", "f", "", "image format (qcow2); probed when empty")
	f.StringVarP(&backing, "backing", "b", "", `new backing file ("" removes it)`)
	f.StringVarP(&backingFmt, "backing-format", "F", "", "format of the new backing file (qcow2 or raw)")
	f.BoolVarP(&unsafe, "unsafe", "u", false, "only rewrite the backing file name; copy nothing")
	f.BoolVarP(&progress, "progress", "p", false, "accepted for compatibility; no progress is shown")
	f.BoolVarP(&quiet, "quiet", "q", false, "print nothing (rebase prints nothing on success anyway)")
	return cmd
}

func runRebase(filename, format, backing, backingFmt string, unsafe bool) error {
	if err := checkFormat(format); err != nil {
		return err
	}
	if err := checkFormat(backingFmt); err != nil {
		return err
	}
	if format == "" {
		var err error
		if format, err = qcow2.Probe(filename); err != nil {
			return failf("Could not open '%s': %v", filename, err)
		}
	}
	if format != "qcow2" {
		return failf("Could not change the backing file of '%s': %s images have no backing file", filename, format)
	}
	if backing == "" {
		backingFmt = ""
	} else if backingFmt == "" {
		return failf("Could not change the backing file to '%s': backing format must be specified", backing)
	}
	if err := qcow2.Rebase(filename, backing, backingFmt, unsafe, openOptions(false, false).Backing); err != nil {
		return failf("Could not change the backing file of '%s': %v", filename, err)
	}
	return nil
}
