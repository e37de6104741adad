package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
	"github.com/spf13/cobra"
)

func newImgMeasureCmd() *cobra.Command {
	var c measureCmd
	cmd := &cobra.Command{
		Use:   "measure [--output=human|json] [-f fmt] [-O output_fmt] [-o options] [-U] [--size N | filename]",
		Short: "Compute the file size a new image needs",
		Long: `Compute how large a new image of format output_fmt (raw, the default, or
qcow2) would be, like qemu-img measure: for an empty image of --size N bytes,
or for a copy of filename (img convert's output). "required size" is what
the image needs for its data and metadata, "fully allocated size" what it
takes with every cluster allocated. -o takes img create's options
(cluster_size, refcount_bits, compat, preallocation, backing_file, ...).
` + imgLockNote + imgPolicyNote,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.run(cmd, args)
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.output, "output", "human", "output format: human or json")
	f.StringVarP(&c.srcFmt, "format", "f", "", "format of filename (qcow2 or raw); probed when empty")
	f.StringVarP(&c.dstFmt, "output-format", "O", "raw", "format of the new image: qcow2 or raw")
	f.StringArrayVarP(&c.opts, "options", "o", nil, "options of the new image, as for img create (-o help lists them)")
	f.StringVar(&c.size, "size", "", "virtual size of an empty new image")
	addForceShareFlag(f, &c.share)
	return cmd
}

type measureCmd struct {
	output, srcFmt, dstFmt, size string
	opts                         []string
	share                        bool
}

func (c *measureCmd) run(cmd *cobra.Command, args []string) error {
	if c.output != "human" && c.output != "json" {
		return failf("--output must be used with human or json as argument.")
	}
	if err := checkFormat(c.srcFmt); err != nil {
		return err
	}
	if c.dstFmt != "qcow2" && c.dstFmt != "raw" {
		if c.dstFmt == "" {
			c.dstFmt = "raw"
		} else {
			return failf("Block driver '%s' does not support size measurement", c.dstFmt)
		}
	}
	if isHelpOpt(c.opts) {
		fmt.Fprint(cmd.OutOrStdout(), optHelp[c.dstFmt])
		return nil
	}
	haveSize := cmd.Flags().Changed("size")
	switch {
	case len(args) == 0 && !haveSize:
		return failf("Either --size N or one filename must be specified.")
	case len(args) == 1 && haveSize:
		return failf("--size N cannot be used together with a filename.")
	}
	var size int64
	if haveSize {
		n, _, err := parseSize(c.size)
		if err != nil {
			return failf("Invalid image size specified. You may use k, M, G, T, P or E suffixes for\n" +
				errPrefix + "kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.")
		}
		size = n
	}
	o, err := parseCreateOpts(c.dstFmt, c.opts)
	if err != nil {
		msg := err.Error()
		if strings.HasPrefix(msg, "Invalid parameter") {
			msg += "\n" + errPrefix + fmt.Sprintf("Invalid options for file format '%s'", c.dstFmt)
		}
		return failf("%s", msg)
	}
	if err := o.extendedL2Err(); err != nil {
		return failf("%v", err)
	}

	var in qcow2.Disk
	if len(args) == 1 {
		in, err = qcow2.OpenDisk(args[0], c.srcFmt, readOptions(false, c.share))
		if err != nil {
			return failf("Could not open '%s': %v", args[0], err)
		}
		defer in.Close()
		size = ceilDiv64(in.Size(), 512) * 512
	}

	out := newQdict()
	if c.dstFmt == "raw" {
		size = ceilDiv64(size, 512) * 512
		out.set("required", size).set("fully-allocated", size)
	} else {
		var data int64
		if in != nil {
			if o.backingFile != "" {
				// Nothing is known to be shared with the new backing file.
				data = ceilDiv64(size, o.clusterSize) * o.clusterSize
			} else if data, err = qcow2.MeasureData(in, o.clusterSize); err != nil {
				return failf("Unable to get block status: %v", err)
			}
		}
		req, full, err := qcow2.Measure(size, o.qcow2Options(size, true), data)
		if err != nil {
			if errors.Is(err, qcow2.ErrRange) {
				return failf("The image size is too large (try using a larger cluster size)")
			}
			return failf("%v", err)
		}
		out.set("required", req).set("fully-allocated", full)
		// Persistent bitmaps: qemu-img reports the space to copy them
		// when both the source (qcow2) and the new image (compat 1.1)
		// support them.
		if in != nil && o.compat == "1.1" {
			if info := in.Info(); info.Format == "qcow2" {
				out.set("bitmaps", qcow2.BitmapsSize(info.Bitmaps, in.Size(), o.clusterSize))
			}
		}
	}
	w := cmd.OutOrStdout()
	if c.output == "json" {
		fmt.Fprintln(w, qjson(out))
		return nil
	}
	fmt.Fprintf(w, "required size: %d\n", out.vals["required"])
	fmt.Fprintf(w, "fully allocated size: %d\n", out.vals["fully-allocated"])
	if v, ok := out.vals["bitmaps"]; ok {
		fmt.Fprintf(w, "bitmaps size: %d\n", v)
	}
	return nil
}

func ceilDiv64(a, b int64) int64 { return (a + b - 1) / b }
