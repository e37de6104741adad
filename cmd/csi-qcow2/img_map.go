package main

import (
	"bufio"
	"fmt"
	"io"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
	"github.com/spf13/cobra"
)

func newImgMapCmd() *cobra.Command {
	var (
		format, output, startStr, lengthStr string
		share                               bool
	)
	cmd := &cobra.Command{
		Use:   "map [-f fmt] [--output=human|json] [--start-offset=OFFSET] [--max-length=LEN] [-U] filename",
		Short: "Show where the guest's data lives in the image and its backing chain",
		Long: `Dump the allocation map of an image over its backing chain, in qemu-img map's
layouts. human lists only the ranges that hold data, with the host offset
and the file that holds them; json lists every range with its depth in the
chain (0 = the top image), present, zero, data and host offset.
` + imgLockNote + imgPolicyNote,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkFormat(format); err != nil {
				return err
			}
			if output != "human" && output != "json" {
				return failf("--output must be used with human or json as argument.")
			}
			var start, length int64 = 0, -1
			var err error
			if startStr != "" {
				if start, _, err = parseSize(startStr); err != nil {
					return failf("Invalid start offset specified! You may use k, M, G, T, P or E suffixes for ")
				}
			}
			if lengthStr != "" {
				if length, _, err = parseSize(lengthStr); err != nil {
					return failf("Invalid length specified! You may use k, M, G, T, P or E suffixes for ")
				}
			}
			filename := args[0]
			d, err := qcow2.OpenDisk(filename, format, readOptions(false, share))
			if err != nil {
				return failf("Could not open '%s': %v", filename, err)
			}
			defer d.Close()
			end := d.Size()
			if length >= 0 && start+length < end {
				end = start + length
			}
			var exts []qcow2.Extent
			if start < end {
				if exts, err = d.Map(start, end-start); err != nil {
					return failf("%v", err)
				}
				exts = mergeExtents(exts)
			}
			layers := chainOf(d, filename)
			w := bufio.NewWriter(cmd.OutOrStdout())
			defer w.Flush()
			if output == "json" {
				writeMapJSON(w, exts)
				return nil
			}
			return writeMapHuman(w, exts, layers)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&format, "format", "f", "", "image format (qcow2 or raw); probed when empty")
	f.StringVar(&output, "output", "human", "output format: human or json")
	f.StringVarP(&startStr, "start-offset", "s", "", "first guest byte to map")
	f.StringVarP(&lengthStr, "max-length", "l", "", "number of guest bytes to map")
	addForceShareFlag(f, &share)
	return cmd
}

// mergeExtents joins neighbouring extents that qemu-img map would print
// as one: same flags and depth, and host offsets that continue each other
// (or no host offset at all, as for compressed clusters).
func mergeExtents(exts []qcow2.Extent) []qcow2.Extent {
	var out []qcow2.Extent
	for _, e := range exts {
		if n := len(out); n > 0 {
			p := &out[n-1]
			if p.Start+p.Length == e.Start && p.Data == e.Data && p.Zero == e.Zero &&
				p.Present == e.Present && p.Compressed == e.Compressed && p.Depth == e.Depth &&
				((p.Offset < 0 && e.Offset < 0) || (p.Offset >= 0 && p.Offset+p.Length == e.Offset)) {
				p.Length += e.Length
				continue
			}
		}
		out = append(out, e)
	}
	return out
}

// writeMapJSON prints the extents as qemu-img 7.2's map --output=json does:
// one object per line inside a single array.
func writeMapJSON(w io.Writer, exts []qcow2.Extent) {
	fmt.Fprint(w, "[")
	for i, e := range exts {
		if i > 0 {
			fmt.Fprint(w, ",\n")
		}
		fmt.Fprintf(w, `{ "start": %d, "length": %d, "depth": %d, "present": %t, "zero": %t, "data": %t`,
			e.Start, e.Length, e.Depth, e.Present, e.Zero, e.Data)
		if e.Offset >= 0 {
			fmt.Fprintf(w, `, "offset": %d`, e.Offset)
		}
		fmt.Fprint(w, "}")
	}
	fmt.Fprintln(w, "]")
}

// writeMapHuman prints the ranges that hold data, as qemu-img map does.
// Data without a host offset (compressed clusters) cannot be shown.
func writeMapHuman(w io.Writer, exts []qcow2.Extent, layers []layer) error {
	fmt.Fprintf(w, "%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File")
	for _, e := range exts {
		if e.Data && e.Offset < 0 {
			return failf("File contains external, encrypted or compressed clusters.")
		}
		if !e.Data || e.Zero {
			continue
		}
		file := e.File
		if e.Depth >= 0 && e.Depth < len(layers) {
			file = layers[e.Depth].filename
		}
		fmt.Fprintf(w, "%-16s%-16s%-16s%s\n", hexAlt(e.Start), hexAlt(e.Length), hexAlt(e.Offset), file)
	}
	return nil
}

// hexAlt formats like C's "%#x": 0x-prefixed, except plain "0" for zero.
func hexAlt(v int64) string {
	if v == 0 {
		return "0"
	}
	return fmt.Sprintf("%#x", v)
}
