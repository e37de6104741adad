package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/csi-qcow2/csi-qcow2/internal/qcow2nbd"
	"github.com/csi-qcow2/csi-qcow2/pkg/nbdattach"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func newImgServeCmd() *cobra.Command {
	var (
		format, socket, exportName, description string
		readOnly, journal                       bool
	)
	cmd := &cobra.Command{
		Use:   "serve [-f fmt] [-r] [-x NAME] --socket PATH filename",
		Short: "Serve an image over NBD on a unix socket (like qemu-nbd)",
		Long: `Export an image over the NBD protocol on a unix socket until SIGINT or
SIGTERM, like qemu-nbd --socket. Clients connect with
nbd+unix:///NAME?socket=PATH (NAME is empty by default). Any number of
clients may connect at once; all see the same image (the export offers
multi-connection). The engine writes through the host page cache, the
equivalent of qemu-nbd --cache=writeback; FLUSH and FUA fdatasync the image.
A writable qcow2 export keeps a write journal in FILENAME.journal (see
--journal): a killed server loses no acknowledged write, and the next open
of the image applies the journal.

A qcow2 image is served through the engine (backing chain included; block
status reports the allocation over the whole chain); a raw image is served
as a plain file (pread/pwrite, holes punched for trim and zeroing).

While it serves, the image is locked as QEMU locks it (docs/engine.md,
"Image locks"): writable, no other program (qemu-img, qemu-nbd, a VM, img
commit, img check) can open it without -U (--force-share), nor write its
backing files; read-only (-r), no one can write it. A writable server also
holds an exclusive flock on the image, so a second server fails at once.
` + imgPolicyNote,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkFormat(format); err != nil {
				return err
			}
			if socket == "" {
				return failf("--socket is required")
			}
			backend, closeFn, err := openServeBackend(args[0], format, readOnly, journal, !readOnly)
			if err != nil {
				return err
			}
			srv := nbdattach.NewServer(nbdattach.Options{Logf: func(f string, a ...any) {
				fmt.Fprintf(cmd.ErrOrStderr(), errPrefix+f+"\n", a...)
			}})
			if err := srv.AddExport(&nbdattach.Export{Name: exportName, Description: description, Backend: backend}); err != nil {
				closeFn()
				return failf("%v", err)
			}
			err = serveUntilSignal(srv, socket)
			if cerr := closeFn(); err == nil && cerr != nil {
				err = failf("closing '%s': %v", args[0], cerr)
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVarP(&format, "format", "f", "", "image format (qcow2 or raw); probed when empty")
	f.StringVarP(&socket, "socket", "k", "", "unix socket path to listen on (a stale socket there is replaced)")
	f.StringVarP(&exportName, "export-name", "x", "", "export name")
	f.StringVarP(&description, "description", "D", "", "export description")
	f.BoolVarP(&readOnly, "read-only", "r", false, "export read-only")
	addJournalFlag(f, &journal)
	return cmd
}

// addJournalFlag adds --journal, on by default, for the commands that
// serve an image to a guest.
func addJournalFlag(f *pflag.FlagSet, journal *bool) {
	f.BoolVar(journal, "journal", true, "qcow2: let copy-on-write writes return without an fdatasync; their mappings wait in FILENAME.journal until the next FLUSH (docs/engine.md, \"The write journal\")")
}

// openServeBackend opens the image and adapts it to the NBD server; with
// lock it first takes the image's serving lock (lockForServing), which the
// returned close function releases after closing the image.
func openServeBackend(filename, format string, readOnly, journal, lock bool) (nbdattach.Backend, func() error, error) {
	if !lock {
		return openBackend(filename, format, readOnly, journal)
	}
	l, err := lockForServing(filename)
	if err != nil {
		return nil, nil, err
	}
	b, closeFn, err := openBackend(filename, format, readOnly, journal)
	if err != nil {
		l.Close()
		return nil, nil, err
	}
	return b, func() error {
		err := closeFn()
		l.Close()
		return err
	}, nil
}

// openBackend opens the image (qcow2 through the engine, raw as a file).
func openBackend(filename, format string, readOnly, journal bool) (nbdattach.Backend, func() error, error) {
	if format == "" {
		var err error
		if format, err = qcow2.Probe(filename); err != nil {
			return nil, nil, failf("Could not open '%s': %v", filename, err)
		}
	}
	if format == "raw" {
		// nbdattach knows nothing of image locks: the engine takes the
		// one it would take on a descriptor of its own.
		lk, err := qcow2.LockFile(filename, qcow2.Options{ReadOnly: readOnly})
		if err != nil {
			return nil, nil, failf("Could not open '%s': %v", filename, err)
		}
		b, err := nbdattach.OpenFileBackend(filename, readOnly)
		if err != nil {
			lk.Close()
			return nil, nil, failf("Could not open '%s': %v", filename, err)
		}
		return b, func() error {
			err := b.Close()
			lk.Close()
			return err
		}, nil
	}
	opts := openOptions(readOnly, false)
	opts.Journal = journal
	img, err := qcow2.Open(filename, opts)
	if err != nil {
		return nil, nil, failf("Could not open '%s': %v", filename, err)
	}
	return qcow2nbd.New(img, readOnly), img.Close, nil
}

// serveUntilSignal listens on the socket and serves until SIGINT/SIGTERM,
// then closes every connection.
func serveUntilSignal(srv *nbdattach.Server, socket string) error {
	if err := removeStaleSocket(socket); err != nil {
		return err
	}
	// Signals are caught before the socket appears: a client that sees
	// the socket may stop the server at once.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	l, err := net.Listen("unix", socket)
	if err != nil {
		return failf("%v", err)
	}
	defer os.Remove(socket)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	select {
	case <-ctx.Done():
		srv.Close()
		<-done
		return nil
	case err := <-done:
		srv.Close()
		return failf("%v", err)
	}
}

// removeStaleSocket removes a socket left by an earlier server; any other
// file at the path is refused.
func removeStaleSocket(path string) error {
	st, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return failf("%v", err)
	}
	if st.Mode()&os.ModeSocket == 0 {
		return failf("'%s' exists and is not a socket", path)
	}
	return os.Remove(path)
}
