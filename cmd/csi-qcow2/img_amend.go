package main

import (
	"fmt"
	"strings"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
	"github.com/spf13/cobra"
)

const amendHelp = `Amend options for 'qcow2':
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
Only lazy_refcounts=on|off can be changed. compat can only be "changed" to
the value the image already has; other options (size: use resize;
backing_file: use rebase; refcount_bits, data_file, ...) are refused.
Turning lazy refcounts off on a dirty image rebuilds its refcounts first.
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
	if compat != "" {
		img, err := qcow2.Open(filename, openOptions(true, true))
		if err != nil {
			return failf("Could not open '%s': %v", filename, err)
		}
		have := img.Info().Compat
		img.Close()
		want := map[string]string{"v2": "0.10", "0.10": "0.10", "v3": "1.1", "1.1": "1.1"}[compat]
		switch {
		case want == "":
			return failf("Invalid compatibility level: '%s'", compat)
		case want != have:
			return failf("Changing compat from %s to %s is not supported", have, want)
		}
	}
	if err := qcow2.Amend(filename, lazy); err != nil {
		return failf("%v", err)
	}
	return nil
}
