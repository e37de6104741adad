package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/csi-qcow2/csi-qcow2/internal/demo"
)

func newDemoCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run the driver in-process and take volumes through their whole life over CSI",
		Long: `demo starts the CSI driver in this process on a temporary store and drives
it over its unix socket as Kubernetes would: a golden image (an ext4 disk
made here and served over http on loopback) is imported once; three volumes
are overlays on it; one is staged and published as a mounted ext4, one as a
raw block device; data is written; an external and an internal snapshot are
taken and restored, and the restores read what the snapshots held; the block
volume is cloned and grown online; then everything is unpublished,
unstaged and deleted. It prints a table of the steps (time and what
happened) and of the volumes (virtual size, what each top holds, chain
length).

Run it as root: it mounts filesystems and binds loop devices (the block
devices come from the driver's FUSE + loop attach). It needs mkfs.ext4
(e2fsprogs). Everything it made is taken down and removed at the end, also
after a failure or Ctrl-C.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			err := demo.Run(ctx, demo.Options{Out: cmd.OutOrStdout(), Dir: dir, Version: version})
			if err != nil {
				fmt.Fprintln(cmd.ErrOrStderr(), "csi-qcow2 demo:", err)
				return exitWith(1)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", os.TempDir(), "where the demo's temporary root is made")
	return cmd
}
