package main

import (
	"fmt"

	"github.com/csi-qcow2/csi-qcow2/pkg/nbdattach"
	"github.com/spf13/cobra"
)

func newImgDetachCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "detach /dev/nbdN|ID",
		Short: "Detach a kernel nbd device (by path or backend identifier)",
		Long: `Disconnect a kernel nbd device: the kernel finishes the requests in flight,
sends NBD_CMD_DISC, and the serving "img attach" process exits. The device
is named by its path or by the backend identifier it was attached with.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dev, err := nbdattach.Detach("", args[0])
			if err != nil {
				return failf("%v", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "detached %s\n", dev.Path)
			return nil
		},
	}
}
