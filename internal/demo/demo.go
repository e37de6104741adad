package demo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/klog/v2"

	"github.com/csi-qcow2/csi-qcow2/pkg/driver"
)

// Options says where the demo writes and works.
type Options struct {
	// Out gets the tables.
	Out io.Writer
	// Dir is where the temporary root is made ("": the system's temp dir).
	Dir string
	// Version is reported by the driver's GetPluginInfo.
	Version string
	// AfterStep, if set, is called after each step with its name (tests
	// use it to interrupt the demo at a given point).
	AfterStep func(name string)
}

// run is one demo: its root, driver, client session and report.
type run struct {
	opts  Options
	root  string
	d     *driver.Driver
	s     *session
	rows  []row
	exits []func()
	log   bytes.Buffer
}

// Run runs the demo until it is done or ctx ends, then takes down and
// removes everything it made, and says so.
func Run(ctx context.Context, opts Options) (err error) {
	if opts.Out == nil {
		opts.Out = io.Discard
	}
	if os.Geteuid() != 0 {
		return errors.New("the demo mounts filesystems and binds loop devices: run it as root")
	}
	root, err := os.MkdirTemp(opts.Dir, "csi-qcow2-demo-")
	if err != nil {
		return err
	}
	r := &run{opts: opts, root: root}
	fmt.Fprintf(opts.Out, "csi-qcow2 demo: driver in-process, store under %s ($DEMO)\n\n", root)
	defer func() {
		err = errors.Join(err, r.cleanup())
	}()
	if err := r.startDriver(); err != nil {
		return err
	}
	err = r.lifecycle(ctx)
	if errors.Is(err, context.Canceled) {
		fmt.Fprintln(opts.Out, "\ninterrupted: cleaning up")
	}
	return err
}

// startDriver starts the driver on a socket under the root, with its
// logs kept in memory (shown if the demo fails), and waits until it is
// ready.
func (r *run) startDriver() error {
	klog.LogToStderr(false)
	klog.SetOutput(&syncWriter{w: &r.log})
	sock, err := r.socketPath()
	if err != nil {
		return err
	}
	d, err := driver.New(driver.Config{
		Endpoint:      "unix://" + sock,
		NodeID:        "demo-node",
		StateDir:      filepath.Join(r.root, "store"),
		Version:       r.opts.Version,
		Overcommit:    1,
		MaxChainDepth: 8,
	})
	if err != nil {
		return err
	}
	r.d = d
	ctx, cancel := context.WithCancel(context.Background())
	var runErr error
	exited := make(chan struct{})
	go func() { runErr = d.Run(ctx); close(exited) }()
	r.atExit(func() {
		cancel()
		<-exited
		if runErr != nil {
			fmt.Fprintln(r.opts.Out, "driver:", runErr)
		}
	})
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	r.atExit(func() { conn.Close() })
	r.s = newSession(conn, r.root)
	return r.step(context.Background(), "start the driver", func() (string, error) {
		if err := r.s.waitReady(context.Background(), sock, exited); err != nil {
			select {
			case <-exited:
				return "", errors.Join(err, runErr)
			default:
				return "", err
			}
		}
		return fmt.Sprintf("%s on a unix socket; Probe ready; node %s", driver.DriverName, r.s.nodeID), nil
	})
}

// socketPath is the driver's socket: in the root, or in a short
// temporary directory of its own when the root's path is too long for a
// unix socket (108 bytes with its NUL).
func (r *run) socketPath() (string, error) {
	if sock := filepath.Join(r.root, "csi.sock"); len(sock) < 100 {
		return sock, nil
	}
	dir, err := os.MkdirTemp("", "csiq-")
	if err != nil {
		return "", err
	}
	r.atExit(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "csi.sock"), nil
}

// atExit runs fn at cleanup, after the CSI teardown, newest first.
func (r *run) atExit(fn func()) { r.exits = append(r.exits, fn) }

// step runs fn as one row of the report, unless ctx has ended.
func (r *run) step(ctx context.Context, name string, fn func() (string, error)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	start := time.Now()
	note, err := fn()
	if err == nil && ctx.Err() != nil {
		err = ctx.Err()
	}
	row := row{step: name, took: time.Since(start), note: note}
	if err != nil {
		row.note = "FAILED: " + err.Error()
	}
	r.rows = append(r.rows, row)
	r.printRow(row)
	if err == nil && r.opts.AfterStep != nil {
		r.opts.AfterStep(name)
	}
	return err
}

// cleanup deletes through CSI what the demo made, stops the driver, takes
// down whatever is still mounted or bound under the root, removes the
// root, and reports what it could not.
func (r *run) cleanup() error {
	var err error
	if r.s != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		err = r.step(ctx, "unpublish, unstage, delete everything", func() (string, error) {
			n := len(r.s.undo)
			return fmt.Sprintf("%d CSI calls, newest first", n), r.s.teardown(ctx)
		})
		cancel()
	}
	for i := len(r.exits) - 1; i >= 0; i-- {
		r.exits[i]()
	}
	left := sweep(r.root)
	if rmErr := os.RemoveAll(r.root); rmErr != nil {
		left = append(left, rmErr.Error())
	}
	if err != nil {
		fmt.Fprintf(r.opts.Out, "\ndriver log (last lines):\n%s\n", tail(r.log.String(), 30))
	}
	if len(left) > 0 {
		fmt.Fprintf(r.opts.Out, "\nleft behind, taken down by force: %v\n", left)
		return errors.Join(err, fmt.Errorf("the demo's teardown left %d things behind: %v", len(left), left))
	}
	fmt.Fprintf(r.opts.Out, "\nleft behind: nothing (no mount, loop device, process or file under %s)\n", r.root)
	return err
}
