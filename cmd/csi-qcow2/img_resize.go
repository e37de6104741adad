package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
	"github.com/spf13/cobra"
)

func newImgResizeCmd() *cobra.Command {
	var (
		format        string
		shrink, quiet bool
	)
	cmd := &cobra.Command{
		Use:   "resize [-q] [-f fmt] [--shrink] filename [+|-]size",
		Short: "Change the virtual size of an image",
		Long: `Grow or shrink an image to size, or by +size/-size. Shrinking needs --shrink;
a qcow2 image only shrinks when no cluster past the new end is allocated.
The size is always the last argument, so "-1G" is not taken for a flag.`,
		// The size may start with '-', so flags are parsed by hand once
		// the last argument has been set aside (qemu-img does the same).
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, a := range args {
				if a == "-h" || a == "--help" {
					return cmd.Help()
				}
			}
			if len(args) < 2 {
				return failf("Not enough arguments")
			}
			sizeArg := args[len(args)-1]
			if err := cmd.Flags().Parse(args[:len(args)-1]); err != nil {
				return failf("%v", err)
			}
			rest := cmd.Flags().Args()
			if len(rest) != 1 {
				return failf("Expecting one image file name")
			}
			return runResize(cmd, rest[0], format, sizeArg, shrink, quiet)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&format, "format", "f", "", "image format (qcow2 or raw); probed when empty")
	f.BoolVar(&shrink, "shrink", false, "allow the image to get smaller")
	f.BoolVarP(&quiet, "quiet", "q", false, "print nothing on success")
	return cmd
}

func runResize(cmd *cobra.Command, filename, format, sizeArg string, shrink, quiet bool) error {
	if err := checkFormat(format); err != nil {
		return err
	}
	rel := 0
	s := sizeArg
	switch {
	case strings.HasPrefix(s, "+"):
		rel, s = 1, s[1:]
	case strings.HasPrefix(s, "-"):
		rel, s = -1, s[1:]
	}
	n, _, err := parseSize(s)
	if err != nil {
		return failf("Parameter 'size' expects a non-negative number below 2^63\n" +
			"Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n" +
			"and exabytes, respectively.")
	}
	if format == "" {
		if format, err = qcow2.Probe(filename); err != nil {
			return failf("Could not open '%s': %v", filename, err)
		}
	}
	var img *qcow2.Image
	var current int64
	if format == "qcow2" {
		img, err = qcow2.Open(filename, openOptions(false, true))
		if err != nil {
			return failf("Could not open '%s': %v", filename, err)
		}
		defer func() {
			if img != nil {
				img.Close()
			}
		}()
		current = img.Size()
	} else {
		st, err := os.Stat(filename)
		if err != nil {
			return failf("Could not open '%s': %v", filename, err)
		}
		current = st.Size()
	}
	total := n
	switch rel {
	case 1:
		total = current + n
	case -1:
		total = current - n
	}
	if total <= 0 || (rel == 1 && total < current) {
		return failf("New image size must be positive")
	}
	if total < current && !shrink {
		return failf("Use the --shrink option to perform a shrink operation.\n" +
			errPrefix + "warning: Shrinking an image will delete all data beyond the shrunken image's end. " +
			"Before performing such an operation, make sure there is no important data there.")
	}
	if img != nil {
		err = img.Resize(total)
		if cerr := img.Close(); err == nil {
			err = cerr
		}
		img = nil
	} else {
		err = os.Truncate(filename, total)
	}
	if err != nil {
		return failf("%v", err)
	}
	if !quiet {
		fmt.Fprintln(cmd.OutOrStdout(), "Image resized.")
	}
	return nil
}
