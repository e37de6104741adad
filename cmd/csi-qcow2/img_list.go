package main

import (
	"errors"
	"fmt"
	"text/tabwriter"

	"github.com/csi-qcow2/csi-qcow2/pkg/nbdattach"
	"github.com/spf13/cobra"
)

func newImgListCmd() *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "list [--all]",
		Short: "List kernel nbd devices with their backend identifiers, sizes and server processes",
		Long: `List the kernel's nbd devices from sysfs (/sys/block/nbd*): size, backend
identifier, the pid the kernel recorded (the thread that configured the
device; it may be dead, or reused by another process) and whether a server
is alive: for a device with a backend identifier, whether a process in this
network namespace holds the identifier's lock ("img attach" does while it
serves), for one attached by ioctl whether the recorded thread runs.
A configured device whose server is dead waits for a restarted "img attach"
(with the same identifier) until its dead-connection timeout runs out.
Without --all only configured devices are listed. The CONNECTED column is the
kernel's own view (netlink STATUS); "-" when the netlink family is missing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			devs, err := nbdattach.ListDevices("")
			if err != nil {
				return failf("%v", err)
			}
			connected := map[int]bool{}
			haveStatus := true
			st, err := nbdattach.Status()
			switch {
			case errors.Is(err, nbdattach.ErrNoNetlinkFamily):
				haveStatus = false
			case err != nil:
				return failf("%v", err)
			}
			for _, s := range st {
				connected[s.Index] = s.Connected
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 8, 2, ' ', 0)
			fmt.Fprintln(w, "DEVICE\tSIZE\tCONNECTED\tPID\tSERVER\tBACKEND")
			for _, d := range devs {
				if !all && !d.Configured() {
					continue
				}
				conn := "-"
				if haveStatus {
					conn = yesNo(connected[d.Index])
				}
				pid, server := "-", "-"
				if d.Configured() {
					pid = fmt.Sprint(d.PID)
					server = "dead"
					if d.ServerAlive() {
						server = "alive"
					}
				}
				fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\t%s\n", d.Path, d.Size, conn, pid, server, d.Backend)
			}
			return w.Flush()
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "list unconfigured devices too")
	return cmd
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
