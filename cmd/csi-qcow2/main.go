// Command csi-qcow2 is the single binary of the csi-qcow2 project. Its
// subcommands: `driver`, the CSI driver of one node (pkg/driver); `img`,
// a qemu-img work-alike (create, info, check, map, resize, convert) built
// on the pure-Go engine in pkg/qcow2; and `version`. The demo (`demo`)
// comes with the node service.
//
// main stays thin: it builds the command tree, runs it, and turns the
// returned error into an exit status (see exitError).
package main

import (
	"io"
	"os"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes the command line args and returns the process exit status.
// Tests call it directly.
func run(args []string, stdout, stderr io.Writer) int {
	root := newRootCmd(stdout, stderr)
	root.SetArgs(args)
	err := root.Execute()
	return reportError(stderr, err)
}
