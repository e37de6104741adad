package main

import (
	"io"

	"github.com/spf13/cobra"
)

// newRootCmd builds the whole command tree writing to stdout and stderr.
func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "csi-qcow2",
		Short: "qcow2-backed local volumes for Kubernetes, and a qemu-img work-alike",
		Long: `csi-qcow2 serves Kubernetes volumes from qcow2 files with a pure-Go engine.

It offers the CSI driver (driver: the Identity, Controller and Node services
over the node-local store), the img tool (a qemu-img work-alike built on the
engine) and version.`,
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.CompletionOptions.DisableDefaultCmd = true
	root.AddCommand(newVersionCmd(), newImgCmd(), newDriverCmd(), newDemoCmd())
	return root
}
