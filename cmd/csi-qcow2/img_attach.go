package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/csi-qcow2/csi-qcow2/pkg/nbdattach"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

func newImgAttachCmd() *cobra.Command {
	var (
		format, device, id          string
		readOnly, useIoctl, journal bool
		connections                 int
		blockSize                   uint64
		timeout, deadConnTimeout    time.Duration
	)
	cmd := &cobra.Command{
		Use:   "attach [-f fmt] [-r] [--device /dev/nbdN] [--id ID] [--connections N] filename",
		Short: "Attach an image to a kernel nbd device and serve it in the foreground (like qemu-nbd -c)",
		Long: `Attach an image to a kernel /dev/nbdN through the generic-netlink nbd family
and serve it from this process until the device is detached ("img detach",
SIGINT or SIGTERM), like qemu-nbd -c but in the foreground: the device lives
as long as this process serves it. The device path is printed on stdout once
the kernel has it.

The device carries a backend identifier (--id, by default the image's
absolute path), shown in /sys/block/nbdN/backend, and the serving process
holds a lock named by it (an abstract unix socket, released when the process
dies). When a device with that identifier already exists and no process
holds its lock (the server was killed or crashed; the pid the kernel
recorded is not trusted, it may have been reused), attach re-adopts it: the
image is opened again and the kernel gets new sockets by RECONFIGURE, so I/O
held by the kernel continues without errors as long as this happens within
--dead-conn-timeout. An image larger than the device (grown while no server
ran) grows the device with it; a smaller one is refused. Use the same
--connections as the first attach. A connection that breaks while this
process runs (a request that exceeded --timeout) is replaced the same way.

Without the netlink family (old kernels) the NBD ioctls are used: then there
is no backend identifier and no re-adoption (--ioctl forces this).

While it serves, the process holds an exclusive flock on the image, so a
second attach of the same image fails instead of serving it twice, and the
image is locked as QEMU locks it (see img serve --help). It marks
itself PR_SET_IO_FLUSHER so that memory reclaim never
waits on the device it serves.
` + imgPolicyNote,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkFormat(format); err != nil {
				return err
			}
			if id == "" {
				abs, err := filepath.Abs(args[0])
				if err != nil {
					return failf("%v", err)
				}
				id = abs
			}
			backend, closeFn, err := openServeBackend(args[0], format, readOnly, journal, true)
			if err != nil {
				return err
			}
			opts := nbdattach.AttachOptions{
				BackendID:       id,
				Size:            uint64(backend.Size()),
				BlockSize:       blockSize,
				Flags:           nbdattach.ExportFlags(backend),
				Connections:     connections,
				Device:          device,
				Timeout:         timeout,
				DeadConnTimeout: deadConnTimeout,
				UseIoctl:        useIoctl,
			}
			err = attachAndServe(cmd.OutOrStdout(), cmd.ErrOrStderr(), backend, opts)
			if cerr := closeFn(); err == nil && cerr != nil {
				err = failf("closing '%s': %v", args[0], cerr)
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVarP(&format, "format", "f", "", "image format (qcow2 or raw); probed when empty")
	f.BoolVarP(&readOnly, "read-only", "r", false, "attach read-only")
	f.StringVar(&device, "device", "", "the /dev/nbdN to use; the kernel picks a free one when empty")
	f.StringVar(&id, "id", "", "backend identifier (default: the image's absolute path)")
	f.IntVar(&connections, "connections", 1, "sockets between the kernel and this server (1-16)")
	f.Uint64Var(&blockSize, "block-size", nbdattach.DefaultBlockSize, "logical block size of the device (512-4096)")
	f.DurationVar(&timeout, "timeout", nbdattach.DefaultTimeout, "kernel request timeout; a connection whose request exceeds it is replaced")
	f.DurationVar(&deadConnTimeout, "dead-conn-timeout", nbdattach.DefaultDeadConnTimeout, "how long the kernel holds I/O for a restarted server before failing it")
	f.BoolVar(&useIoctl, "ioctl", false, "use the legacy NBD ioctls instead of netlink")
	addJournalFlag(f, &journal)
	return cmd
}

// attachAndServe attaches, prints the device, and serves until the device
// is detached or a signal asks for a detach.
func attachAndServe(stdout, stderr io.Writer, backend nbdattach.Backend, opts nbdattach.AttachOptions) error {
	logf := func(f string, a ...any) { fmt.Fprintf(stderr, errPrefix+f+"\n", a...) }
	opts.Logf = logf
	srv := nbdattach.NewServer(nbdattach.Options{Logf: logf})
	if err := srv.AddExport(&nbdattach.Export{Backend: backend}); err != nil {
		return failf("%v", err)
	}
	serve := func(c net.Conn) error { return srv.ServeTransmission(c, "") }
	// Signals are caught before the device exists, so none can end the
	// process between CONNECT and the handler.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	att, err := nbdattach.Attach(opts, serve)
	if err != nil {
		return failf("%v", err)
	}
	if att.Reattached {
		logf("re-adopted %s (backend %s)", att.Path, opts.BackendID)
	}
	fmt.Fprintln(stdout, att.Path)
	done := make(chan error, 1)
	go func() { done <- att.Wait() }()
	select {
	case <-ctx.Done():
		err = att.Detach()
	case err = <-done:
	}
	srv.Close()
	if err != nil {
		return failf("%s: %v", att.Path, err)
	}
	return nil
}

// lockForServing takes an exclusive flock on the image for as long as the
// returned file stays open (the process's life: kill -9 releases it). Two
// servers of one image would each cache and allocate on their own and
// corrupt it. The backend lock Attach holds is named by the identifier, not
// the image, and lives in one network namespace; this lock covers two
// identifiers for one image and servers in other namespaces. The image
// locks Open takes (QEMU's byte-range OFD locks, which flock does not
// interact with) refuse a second writer too, but not a second read-only
// attach.
func lockForServing(filename string) (*os.File, error) {
	f, err := os.Open(filename)
	if err != nil {
		return nil, failf("Could not open '%s': %v", filename, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, failf("'%s' is being served by another process (it holds the image's lock)", filename)
		}
		return nil, failf("lock '%s': %v", filename, err)
	}
	return f, nil
}
