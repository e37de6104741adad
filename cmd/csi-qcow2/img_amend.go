package main

import (
	"fmt"
	"strings"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
	"github.com/spf13/cobra"
)

const amendHelp = `Amend options for 'qcow2':
  compat=<str>           - Compatibility level (v2 [0.10], v3 [1.1])
  lazy_refcounts=<bool (on/off)> - Postpone refcount updates
`

func newImgAmendCmd() *cobra.Command {
	var (
		format string
		opts   []string
		quiet  bool
	)
	cmd := &cobra.Command{
		Use:   "amend [-q] [-f fmt] -o options filename",
		Short: "Change options of an existing qcow2 image",
		Long: `Change options of an existing qcow2 image in place, like qemu-img amend.
lazy_refcounts=on|off and compat=0.10|1.1 (also v2|v3) can be changed;
other options (size: use resize; backing_file: use rebase; refcount_bits,
data_file, ...) are refused. Turning lazy refcounts off on a dirty image
rebuilds its refcounts first.

compat=1.1 upgrades a version 2 image (the header is rewritten).
compat=0.10 downgrades a version 3 image as qemu-img does: lazy refcounts
are turned off, zero clusters of the active layer are expanded (left
unallocated when there is no backing file, else stored as clusters of
zeros), and only when all of that is durable is the header rewritten as
version 2. It is refused, changing nothing, when the image has what
version 2 cannot express: refcount_bits other than 16, an external data
file, extended L2 entries, zstd-compressed clusters, persistent bitmaps,
internal snapshots of another size or with zero clusters of their own.
`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var list []string
			for _, o := range opts {
				for _, kv := range splitOptList(o) {
					if kv != "" {
						list = append(list, kv)
					}
				}
			}
			if isHelpOpt(list) {
				fmt.Fprint(cmd.OutOrStdout(), amendHelp)
				return nil
			}
			return runAmend(args[0], format, list)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&format, "format", "f", "", "image format (qcow2); probed when empty")
	f.StringArrayVarP(&opts, "options", "o", nil, "options to change (-o help lists them)")
	f.BoolVarP(&quiet, "quiet", "q", false, "print nothing (amend prints nothing on success anyway)")
	return cmd
}

func runAmend(filename, format string, list []string) error {
	if len(list) == 0 {
		return failf("Must specify options (-o)")
	}
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
		return failf("Format driver '%s' does not support option amendment", format)
	}
	var lazy *bool
	var compat string
	for _, kv := range list {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "lazy_refcounts":
			b, err := parseOptBool(k, v)
			if err != nil {
				return failf("%v", err)
			}
			lazy = &b
		case "compat":
			compat = v
		case "size", "backing_file", "backing_fmt", "refcount_bits", "data_file", "data_file_raw",
			"encrypt.iter-time", "encrypt.keyslot", "encrypt.new-secret", "encrypt.old-secret", "encrypt.state":
			return failf("Changing the option '%s' is not supported by this tool", k)
		default:
			return failf("Invalid parameter '%s'", k)
		}
	}
	want := map[string]string{"v2": "0.10", "0.10": "0.10", "v3": "1.1", "1.1": "1.1"}[compat]
	switch {
	case compat != "" && want == "":
		return failf("Invalid compatibility level: '%s'", compat)
	case want == "0.10" && lazy != nil && *lazy:
		return failf("Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)")
	case want == "0.10":
		// A downgrade turns lazy refcounts off itself.
		lazy = nil
	}
	if want != "" {
		if err := qcow2.AmendCompat(filename, want); err != nil {
			return failf("%v", err)
		}
	}
	if lazy != nil {
		if err := qcow2.Amend(filename, lazy); err != nil {
			return failf("%v", err)
		}
	}
	return nil
}
