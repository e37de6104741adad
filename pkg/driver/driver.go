package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
	"k8s.io/mount-utils"

	"github.com/csi-qcow2/csi-qcow2/pkg/driver/golden"
	"github.com/csi-qcow2/csi-qcow2/pkg/driver/store"
)

// Driver is one node's CSI plugin.
type Driver struct {
	cfg     Config
	st      atomic.Pointer[store.Store]
	metrics *driverMetrics
	mounter mount.Interface
	images  *golden.Importer
	node    *nodeState
	path    attachPath
}

// New checks cfg and makes a driver; Run serves it.
func New(cfg Config) (*Driver, error) {
	if cfg.Overcommit == 0 {
		cfg.Overcommit = 1
	}
	if err := cfg.check(); err != nil {
		return nil, err
	}
	path, why, err := chooseAttachPath(cfg.AttachPath, cfg.StateDir)
	if err != nil {
		return nil, err
	}
	klog.InfoS("attach path chosen", "path", path.name(), "why", why)
	d := &Driver{cfg: cfg, mounter: mount.New(""), node: newNodeState(), path: path}
	d.metrics = newMetrics(d)
	d.images = d.newImporter()
	return d, nil
}

// store is the opened store, or Unavailable while Run is still opening
// and recovering it.
func (d *Driver) store() (*store.Store, error) {
	st := d.st.Load()
	if st == nil {
		return nil, status.Error(codes.Unavailable, "the store is still being opened and recovered")
	}
	return st, nil
}

func (d *Driver) ready() bool { return d.st.Load().Ready() }

// Run listens on the endpoint at once (so that probes are answered while
// the store recovers), opens the store, and serves until ctx ends.
func (d *Driver) Run(ctx context.Context) error {
	sock, err := socketPath(d.cfg.Endpoint)
	if err != nil {
		return err
	}
	lis, err := listenUnix(sock)
	if err != nil {
		return err
	}
	srv := grpc.NewServer(grpc.UnaryInterceptor(d.intercept))
	csi.RegisterIdentityServer(srv, identityServer{d: d})
	csi.RegisterControllerServer(srv, controllerServer{d: d})
	csi.RegisterNodeServer(srv, nodeServer{d: d})
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	klog.InfoS("CSI driver listening", "driver", DriverName, "version", d.cfg.Version, "node", d.cfg.NodeID, "endpoint", sock)

	var metricsSrv *http.Server
	if d.cfg.MetricsAddress != "" {
		metricsSrv = &http.Server{Addr: d.cfg.MetricsAddress, Handler: d.metrics.handler(), ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := metricsSrv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				klog.ErrorS(err, "metrics server stopped", "address", d.cfg.MetricsAddress)
			}
		}()
	}
	stop := func() {
		srv.GracefulStop()
		d.images.Shutdown()
		if metricsSrv != nil {
			metricsSrv.Close()
		}
	}
	start := time.Now()
	st, err := store.Open(d.storeConfig())
	if err != nil {
		stop()
		return fmt.Errorf("opening the store at %s: %w", d.cfg.StateDir, err)
	}
	if _, err := d.images.Collect(); err != nil {
		stop()
		return fmt.Errorf("collecting interrupted image imports: %w", err)
	}
	if err := d.cleanStaleAttachments(); err != nil {
		// Staging the volumes concerned fails with the reason.
		klog.ErrorS(err, "stale attachments of an earlier run left")
	}
	d.readopt(st)
	d.st.Store(st)
	vols := st.ListVolumes()
	klog.InfoS("store ready", "stateDir", st.Root(), "volumes", len(vols), "snapshots", len(st.ListSnapshots()), "took", time.Since(start))
	scrubCtx, cancelScrub := context.WithCancel(ctx)
	scrubbed := make(chan struct{})
	go func() { defer close(scrubbed); d.scrub(scrubCtx, st) }()
	defer func() { cancelScrub(); <-scrubbed }()
	// Registered once the store is ready: the kubelet calls NodeGetInfo
	// at once, and a node whose volumes are still being recovered should
	// not be offered new ones yet.
	var refused <-chan error
	if d.cfg.KubeletRegistrationDir != "" {
		var unregister func()
		if refused, unregister, err = d.registerWithKubelet(); err != nil {
			stop()
			return err
		}
		defer unregister()
	}
	select {
	case <-ctx.Done():
		stop()
		return nil
	case err := <-served:
		stop()
		return err
	case err := <-refused:
		stop()
		return fmt.Errorf("the kubelet refused the plugin: %w", err)
	}
}

func (d *Driver) storeConfig() store.Config {
	return store.Config{
		Root:          d.cfg.StateDir,
		Node:          d.cfg.NodeID,
		MaxChainDepth: d.cfg.MaxChainDepth,
		ImportImage:   d.importImage(d.images),
		Logf: func(format string, args ...any) {
			klog.InfoS(fmt.Sprintf(format, args...), "component", "store")
		},
	}
}

// listenUnix listens on a unix socket, replacing a socket a previous run
// left (never any other kind of file).
func listenUnix(path string) (net.Listener, error) {
	if st, err := os.Lstat(path); err == nil {
		if st.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("endpoint %s exists and is not a socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, err
		}
	}
	return net.Listen("unix", path)
}
