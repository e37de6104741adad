package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"google.golang.org/grpc"
	"k8s.io/klog/v2"
	registration "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// kubeletRegistration does node-driver-registrar's job inside the driver,
// for clusters that cannot run the registrar's image: it serves the
// kubelet's plugin-registration API on a socket in the kubelet's
// plugins_registry directory, naming the CSI socket as the kubelet sees
// it. The kubelet finds the socket, asks GetInfo, calls NodeGetInfo on the
// CSI socket and reports the outcome back.
type kubeletRegistration struct {
	registration.UnimplementedRegistrationServer
	// endpoint is the CSI socket's path on the host.
	endpoint string
	// failed receives the kubelet's error when it refuses the plugin.
	failed chan error
}

func (r *kubeletRegistration) GetInfo(context.Context, *registration.InfoRequest) (*registration.PluginInfo, error) {
	return &registration.PluginInfo{
		Type:              registration.CSIPlugin,
		Name:              DriverName,
		Endpoint:          r.endpoint,
		SupportedVersions: []string{"1.0.0"},
	}, nil
}

func (r *kubeletRegistration) NotifyRegistrationStatus(_ context.Context, s *registration.RegistrationStatus) (*registration.RegistrationStatusResponse, error) {
	if s.PluginRegistered {
		klog.InfoS("registered with the kubelet", "endpoint", r.endpoint)
	} else {
		select {
		case r.failed <- errors.New(s.Error):
		default:
		}
	}
	return &registration.RegistrationStatusResponse{}, nil
}

// registrationSocket is the socket's path in the kubelet's plugins_registry
// directory; the name is node-driver-registrar's, so that one replaces the
// other cleanly.
func registrationSocket(dir string) string {
	return filepath.Join(dir, DriverName+"-reg.sock")
}

// registerWithKubelet serves the registration socket until stop is called.
// A refusal arrives on the returned channel: the driver then exits, as the
// registrar does, so that its restart tries again.
func (d *Driver) registerWithKubelet() (failed <-chan error, stop func(), err error) {
	sock := registrationSocket(d.cfg.KubeletRegistrationDir)
	lis, err := listenAndPlace(sock)
	if err != nil {
		return nil, nil, fmt.Errorf("kubelet registration socket: %w", err)
	}
	r := &kubeletRegistration{endpoint: d.cfg.KubeletRegistrationPath, failed: make(chan error, 1)}
	srv := grpc.NewServer()
	registration.RegisterRegistrationServer(srv, r)
	go func() {
		if err := srv.Serve(lis); err != nil {
			klog.ErrorS(err, "kubelet registration server stopped", "socket", sock)
		}
	}()
	klog.InfoS("waiting for the kubelet to register the plugin", "socket", sock, "endpoint", r.endpoint)
	return r.failed, func() {
		// Graceful: the kubelet's last call gets its answer.
		srv.GracefulStop()
		// The socket's removal tells the kubelet the plugin is gone; the
		// listener does not unlink it (listenAndPlace).
		if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
			klog.ErrorS(err, "removing the kubelet registration socket", "socket", sock)
		}
	}, nil
}

// listenAndPlace listens on a hidden name beside path and renames the
// socket into place: the kubelet dials a socket as soon as it appears, and
// a socket bound but not yet listening would refuse it. The kubelet's
// watcher ignores names that start with a dot.
func listenAndPlace(path string) (net.Listener, error) {
	hidden := filepath.Join(filepath.Dir(path), "."+filepath.Base(path))
	lis, err := listenUnix(hidden)
	if err != nil {
		return nil, err
	}
	// The name changes under it: Close must not unlink the hidden name,
	// which a later run may be using.
	lis.(*net.UnixListener).SetUnlinkOnClose(false)
	if st, err := os.Lstat(path); err == nil && st.Mode()&os.ModeSocket == 0 {
		lis.Close()
		os.Remove(hidden)
		return nil, fmt.Errorf("%s exists and is not a socket", path)
	}
	if err := os.Rename(hidden, path); err != nil {
		lis.Close()
		os.Remove(hidden)
		return nil, err
	}
	return lis, nil
}
