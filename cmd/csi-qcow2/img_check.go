package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
	"github.com/spf13/cobra"
)

// Exit statuses of qemu-img check.
const (
	checkExitCheckError  = 1
	checkExitCorruptions = 2
	checkExitLeaks       = 3
	checkExitNoChecks    = 63 // the format has no consistency checks (raw)
)

func newImgCheckCmd() *cobra.Command {
	var (
		format, output, repair string
		quiet, share           bool
	)
	cmd := &cobra.Command{
		Use:   "check [-q] [-f fmt] [--output=human|json] [-r leaks|all] [-U] filename",
		Short: "Check (and optionally repair) a qcow2 image's metadata",
		Long: `Check the refcounts and mapping tables of a qcow2 image, like qemu-img check.
-r leaks frees leaked clusters; -r all also repairs corruptions. After a
repair the image is checked again and that result is reported.

Exit status: 0 no problems, 1 the check itself failed, 2 corruptions,
3 leaked clusters only, 63 the format has no checks (raw). The backing
chain is not opened.

Locks: the image is locked as QEMU locks it, so a check fails while another
program (qemu-img, qemu-nbd, a VM, img serve or attach) has it open for
writing, and a repair also while anyone reads it. -U (--force-share, not
with -r) checks it anyway, as qemu-img check -U does; the result may then
report problems that are only writes in progress.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkFormat(format); err != nil {
				return err
			}
			if output != "human" && output != "json" {
				return failf("--output must be used with human or json as argument.")
			}
			mode := qcow2.RepairNone
			switch repair {
			case "":
			case "leaks":
				mode = qcow2.RepairLeaks
			case "all":
				mode = qcow2.RepairAll
			default:
				return failf("Invalid option for -r: '%s'", repair)
			}
			if share && mode != qcow2.RepairNone {
				return failf("Could not open '%s': force-share=on can only be used with read-only images", args[0])
			}
			return runCheck(cmd.OutOrStdout(), cmd.ErrOrStderr(), args[0], format, output, qcow2.CheckOptions{Repair: mode, ForceShare: share}, quiet)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&format, "format", "f", "", "image format (qcow2 or raw); probed when empty")
	f.StringVar(&output, "output", "human", "output format: human or json")
	f.StringVarP(&repair, "repair", "r", "", "repair: leaks or all")
	f.BoolVarP(&quiet, "quiet", "q", false, "print no report on stdout")
	addForceShareFlag(f, &share)
	return cmd
}

func runCheck(stdout, stderr io.Writer, filename, format, output string, opts qcow2.CheckOptions, quiet bool) error {
	if format == "" {
		f, err := qcow2.Probe(filename)
		if err != nil {
			return failf("Could not open '%s': %v", filename, err)
		}
		format = f
	}
	if format != "qcow2" {
		return &exitError{Code: checkExitNoChecks, Msg: "This image format does not support checks"}
	}
	// With a repair, Check reports the counters of a second, read-only
	// check of the repaired image and what the repair fixed, as qemu-img.
	res, err := qcow2.Check(filename, opts)
	if errors.Is(err, qcow2.ErrLocked) {
		return failf("Could not open '%s': %v", filename, err)
	}
	if err != nil {
		return failf("Check failed: %v", err)
	}
	printCheckMessages(stderr, res)
	if res.Filename == "" {
		res.Filename = filename
	}
	if !quiet {
		if output == "json" {
			fmt.Fprintln(stdout, qjson(checkDict(res)))
		} else {
			fmt.Fprint(stdout, res.RepairPreamble()+res.Summary())
		}
	}
	switch code := res.ExitCode(); code {
	case 0:
		return nil
	case checkExitCheckError:
		return &exitError{Code: code, Msg: "Check failed"}
	default:
		return exitWith(code)
	}
}

// printCheckMessages writes the per-problem lines ("Leaked cluster ...",
// "ERROR ...") to stderr, where qemu-img prints them.
func printCheckMessages(stderr io.Writer, res *qcow2.CheckResult) {
	for _, m := range res.Messages {
		fmt.Fprintln(stderr, m)
	}
	if res.MessagesDropped > 0 {
		fmt.Fprintf(stderr, "(%d more messages not shown)\n", res.MessagesDropped)
	}
}

// checkDict is qemu-img's ImageCheck object: counters that are zero are
// left out, except check-errors.
func checkDict(r *qcow2.CheckResult) *qdict {
	d := newQdict()
	d.set("filename", r.Filename)
	format := r.Format
	if format == "" {
		format = "qcow2"
	}
	d.set("format", format)
	d.set("check-errors", int64(r.CheckErrors))
	opt := func(k string, v int64) {
		if v != 0 {
			d.set(k, v)
		}
	}
	opt("image-end-offset", r.ImageEndOffset)
	opt("corruptions", int64(r.Corruptions))
	opt("leaks", int64(r.Leaks))
	opt("corruptions-fixed", int64(r.CorruptionsFixed))
	opt("leaks-fixed", int64(r.LeaksFixed))
	opt("total-clusters", r.TotalClusters)
	opt("allocated-clusters", r.AllocatedClusters)
	opt("fragmented-clusters", r.FragmentedClusters)
	opt("compressed-clusters", r.CompressedClusters)
	return d
}
