package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"k8s.io/klog/v2"

	"github.com/csi-qcow2/csi-qcow2/pkg/driver"
	"github.com/csi-qcow2/csi-qcow2/pkg/driver/store"
)

func newDriverCmd() *cobra.Command {
	cfg := driver.Config{Overcommit: 1, MaxChainDepth: store.DefaultMaxChainDepth}
	cmd := &cobra.Command{
		Use:   "driver",
		Short: "Run the CSI driver for this node's volumes",
		Long: `driver serves the CSI Identity, Controller and Node services (` + driver.DriverName + `)
for the volumes, snapshots and golden images on this node's disk, on a
unix socket. Staged volumes become block devices on one of two attach paths,
chosen at start (--attach-path): the kernel's nbd driver through netlink
(/dev/nbdN, the volume ID as its backend identifier; the module is loaded
with modprobe when it is not), or, where the kernel has no nbd, a FUSE file
under a direct-I/O loop device (/dev/loopN). Every node runs one; external-provisioner
and csi-snapshotter run beside it with --node-deployment (docs/driver.md).

It stops cleanly on SIGTERM or SIGINT, leaving staged volumes attached:
the next run takes kernel NBD devices over from <state-dir>/node (a FUSE
device fails I/O until the CO stages it again; docs/driver.md, Restart).
The store under --state-dir is recovered at start: operations a crash
interrupted are finished or undone before the services report ready
(Probe).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfg.NodeID == "" {
				cfg.NodeID = os.Getenv("NODE_NAME")
			}
			cfg.Version = version
			d, err := driver.New(cfg)
			if err == nil {
				ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
				defer stop()
				err = d.Run(ctx)
			}
			if err != nil {
				fmt.Fprintln(cmd.ErrOrStderr(), "csi-qcow2 driver:", err)
				return exitWith(1)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Endpoint, "endpoint", "unix:///csi/csi.sock", "CSI endpoint: a unix socket (unix:///path or /path)")
	f.StringVar(&cfg.NodeID, "node-id", "", "this node's ID, the Kubernetes node name (default: $NODE_NAME)")
	f.StringVar(&cfg.StateDir, "state-dir", "/var/lib/csi-qcow2", "directory of the node-local store: images, layers, records")
	f.IntVar(&cfg.MaxChainDepth, "max-chain-depth", cfg.MaxChainDepth, "most files in a volume's chain, top included; a snapshot past it merges frozen layers into the top, live")
	f.Float64Var(&cfg.Overcommit, "overcommit", cfg.Overcommit, "virtual bytes GetCapacity promises per physical byte (1: never more than the disk holds)")
	f.StringSliceVar(&cfg.ImageFileRoots, "image-file-root", nil, "directory that file: image URLs may name (repeatable; none: file: URLs are refused)")
	f.Int64Var(&cfg.MaxImageBytes, "max-image-bytes", 0, "largest golden image download in bytes (0: the built-in bound)")
	f.StringVar(&cfg.MetricsAddress, "metrics-address", "", "serve Prometheus metrics on this host:port at /metrics (empty: off)")
	f.StringVar(&cfg.AttachPath, "attach-path", "auto", "how staged volumes become block devices: nbd (the kernel's nbd driver), fuse (a FUSE file under a loop device), auto (nbd where the node has it), or none (no volume is staged here: an instance that only answers a central sidecar such as external-resizer)")
	f.StringVar(&cfg.KubeletRegistrationDir, "kubelet-registration-dir", "", "register with the kubelet through this plugins_registry directory, as node-driver-registrar does (empty: the registrar does it)")
	f.StringVar(&cfg.KubeletRegistrationPath, "kubelet-registration-path", "", "the CSI socket's absolute path on the host, which the kubelet dials (with --kubelet-registration-dir)")
	// klog's flags (-v, --logtostderr, ...) on the same command line.
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	f.AddGoFlagSet(fs)
	return cmd
}
