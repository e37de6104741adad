package main

import (
	"fmt"
	"strings"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
	"github.com/spf13/cobra"
)

func newImgInfoCmd() *cobra.Command {
	var (
		format, output string
		chain, share   bool
	)
	cmd := &cobra.Command{
		Use:   "info [-f fmt] [--output=human|json] [--backing-chain] [-U] filename",
		Short: "Show information about an image",
		Long: `Show the format, sizes, backing file and qcow2 details of an image, in
qemu-img info's human or JSON layout. --backing-chain lists every image of
the chain, top first.
` + imgLockNote + imgPolicyNote,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkFormat(format); err != nil {
				return err
			}
			if output != "human" && output != "json" {
				return failf("--output must be used with human or json as argument.")
			}
			filename := args[0]
			d, err := qcow2.OpenDisk(filename, format, readOptions(!chain, share))
			if err != nil {
				return failf("Could not open '%s': %v", filename, err)
			}
			defer d.Close()
			layers := []layer{{disk: d, filename: filename}}
			if chain {
				layers = chainOf(d, filename)
			}
			var infos []*qdict
			for _, l := range layers {
				infos = append(infos, imageInfoDict(l.disk.Info(), l.filename))
			}
			out := cmd.OutOrStdout()
			switch {
			case output == "json" && chain:
				list := make([]qval, len(infos))
				for i, x := range infos {
					list[i] = x
				}
				fmt.Fprintln(out, qjson(list))
			case output == "json":
				fmt.Fprintln(out, qjson(infos[0]))
			default:
				for i, x := range infos {
					if i > 0 {
						fmt.Fprintln(out)
					}
					fmt.Fprint(out, humanInfo(x))
				}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&format, "format", "f", "", "image format (qcow2 or raw); probed when empty")
	f.StringVar(&output, "output", "human", "output format: human or json")
	f.BoolVar(&chain, "backing-chain", false, "show every image of the backing chain")
	addForceShareFlag(f, &share)
	return cmd
}

// imageInfoDict builds qemu-img's ImageInfo object for one image; filename
// is the name qemu-img would show (the argument, or the resolved backing
// file path).
func imageInfoDict(in qcow2.Info, filename string) *qdict {
	d := newQdict()
	d.set("filename", filename)
	d.set("format", in.Format)
	d.set("dirty-flag", in.Dirty)
	if in.ActualSize >= 0 {
		d.set("actual-size", in.ActualSize)
	}
	d.set("virtual-size", in.VirtualSize)
	if in.ClusterSize > 0 {
		d.set("cluster-size", in.ClusterSize)
	}
	if in.BackingFilename != "" {
		d.set("backing-filename", in.BackingFilename)
		d.set("full-backing-filename", pathCombine(filename, in.BackingFilename))
		if in.BackingFormat != "" {
			d.set("backing-filename-format", in.BackingFormat)
		}
	}
	if in.Format == "qcow2" {
		d.set("format-specific", newQdict().set("type", "qcow2").set("data", qcow2SpecificDict(in)))
	}
	return d
}

// qcow2SpecificDict is ImageInfoSpecificQCow2: v2 images report only
// compat, compression type and refcount bits.
func qcow2SpecificDict(in qcow2.Info) *qdict {
	d := newQdict()
	d.set("compat", in.Compat)
	if in.Compat != "0.10" {
		if in.DataFile != "" {
			d.set("data-file", in.DataFile)
		}
		d.set("extended-l2", in.ExtendedL2)
		d.set("lazy-refcounts", in.LazyRefcounts)
		d.set("corrupt", in.Corrupt)
		if len(in.Bitmaps) > 0 {
			d.set("bitmaps", bitmapsList(in.Bitmaps))
		}
	}
	d.set("refcount-bits", int64(in.RefcountBits))
	ct := in.CompressionType
	if ct == "" {
		ct = "zlib"
	}
	d.set("compression-type", ct)
	return d
}

// humanInfo renders an ImageInfo object as qemu-img info's human layout.
func humanInfo(d *qdict) string {
	var b strings.Builder
	get := func(k string) (qval, bool) { v, ok := d.vals[k]; return v, ok }
	vsize := d.vals["virtual-size"].(int64)
	fmt.Fprintf(&b, "image: %s\nfile format: %s\nvirtual size: %s (%d bytes)\n",
		d.vals["filename"], d.vals["format"], humanSize(vsize), vsize)
	if v, ok := get("actual-size"); ok {
		fmt.Fprintf(&b, "disk size: %s\n", humanSize(v.(int64)))
	} else {
		b.WriteString("disk size: unavailable\n")
	}
	if v, ok := get("cluster-size"); ok {
		fmt.Fprintf(&b, "cluster_size: %d\n", v)
	}
	if v, _ := get("dirty-flag"); v == true {
		b.WriteString("cleanly shut down: no\n")
	}
	if v, ok := get("backing-filename"); ok {
		fmt.Fprintf(&b, "backing file: %s", v)
		if full, ok := get("full-backing-filename"); !ok {
			b.WriteString(" (cannot determine actual path)")
		} else if full != v {
			fmt.Fprintf(&b, " (actual path: %s)", full)
		}
		b.WriteByte('\n')
		if f, ok := get("backing-filename-format"); ok {
			fmt.Fprintf(&b, "backing file format: %s\n", f)
		}
	}
	if v, ok := get("format-specific"); ok {
		b.WriteString("Format specific information:\n")
		dumpHuman(&b, v.(*qdict).vals["data"].(*qdict), 1)
	}
	return b.String()
}

// bitmapsList is the "bitmaps" member of ImageInfoSpecificQCow2
// (Qcow2BitmapInfo: name, granularity and flags).
func bitmapsList(bms []qcow2.BitmapInfo) []qval {
	out := make([]qval, len(bms))
	for i, b := range bms {
		flags := []qval{}
		for _, f := range b.Flags() {
			flags = append(flags, f)
		}
		out[i] = newQdict().set("name", b.Name).set("granularity", b.Granularity).set("flags", flags)
	}
	return out
}
