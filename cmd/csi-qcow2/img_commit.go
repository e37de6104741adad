package main

import (
	"fmt"
	"os"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
	"github.com/spf13/cobra"
)

func newImgCommitCmd() *cobra.Command {
	var (
		format, base          string
		drop, quiet, progress bool
	)
	cmd := &cobra.Command{
		Use:   "commit [-q] [-p] [-f fmt] [-b base] [-d] filename",
		Short: "Copy the changes in an image into its backing file",
		Long: `Copy every cluster a qcow2 image defines into its backing file (qcow2 or
raw), like qemu-img commit, then empty the image so that it reads through
to the backing file (-d keeps the image as it is). A backing file smaller
than the image is grown to the image's size.

Only the immediate backing file can be the target: -b, when given, must
name it.
` + imgPolicyNote,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := runCommit(args[0], format, base, drop); err != nil {
				return err
			}
			if !quiet {
				fmt.Fprintln(cmd.OutOrStdout(), "Image committed.")
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&format, "format", "f", "", "image format (qcow2); probed when empty")
	f.StringVarP(&base, "base", "b", "", "the backing file to commit into (must be the immediate one)")
	f.BoolVarP(&drop, "drop", "d", false, "do not empty the image after committing")
	f.BoolVarP(&progress, "progress", "p", false, "accepted for compatibility; no progress is shown")
	f.BoolVarP(&quiet, "quiet", "q", false, "print nothing on success")
	return cmd
}

func runCommit(filename, format, base string, drop bool) error {
	if err := checkFormat(format); err != nil {
		return err
	}
	if format == "" {
		var err error
		if format, err = qcow2.Probe(filename); err != nil {
			return failf("Could not open '%s': %v", filename, err)
		}
	}
	if format != "qcow2" {
		return failf("Image does not have a backing file")
	}
	img, err := qcow2.Open(filename, openOptions(true, true))
	if err != nil {
		return failf("Could not open '%s': %v", filename, err)
	}
	backing := img.Info().BackingFilename
	img.Close()
	if backing == "" {
		return failf("Image does not have a backing file")
	}
	if base != "" {
		bs, err1 := os.Stat(base)
		is, err2 := os.Stat(pathCombine(filename, backing))
		if err1 != nil || err2 != nil || !os.SameFile(bs, is) {
			return failf("Did not find '%s' as the immediate backing file of '%s' (only committing into the immediate backing file is supported)", base, filename)
		}
	}
	if err := qcow2.Commit(filename, openOptions(false, false).Backing, drop); err != nil {
		return failf("%v", err)
	}
	return nil
}
