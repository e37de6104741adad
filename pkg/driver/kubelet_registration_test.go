package driver

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	registration "k8s.io/kubelet/pkg/apis/pluginregistration/v1"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
)

// runRegistering runs a driver that registers itself in a temporary
// plugins_registry directory, and returns a client of its registration
// socket, as the kubelet would dial it, and the channel of Run's result.
func runRegistering(t *testing.T) (registration.RegistrationClient, string, context.CancelFunc, <-chan error) {
	t.Helper()
	dir := t.TempDir()
	regDir := filepath.Join(dir, "plugins_registry")
	if err := os.Mkdir(regDir, 0o755); err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{
		Endpoint: "unix://" + filepath.Join(dir, "csi.sock"), NodeID: "node-1", StateDir: filepath.Join(dir, "state"),
		AttachPath: "none", KubeletRegistrationDir: regDir, KubeletRegistrationPath: "/var/lib/kubelet/plugins/csi-qcow2.io/csi.sock",
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	sock := filepath.Join(regDir, DriverName+"-reg.sock")
	testtools.WaitFor(t, "the registration socket", func() bool { _, err := os.Stat(sock); return err == nil })
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return registration.NewRegistrationClient(conn), sock, cancel, done
}

func TestKubeletRegistration(t *testing.T) {
	client, sock, cancel, done := runRegistering(t)
	ctx := context.Background()
	info, err := client.GetInfo(ctx, &registration.InfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if info.Type != registration.CSIPlugin || info.Name != DriverName || info.Endpoint != "/var/lib/kubelet/plugins/csi-qcow2.io/csi.sock" ||
		len(info.SupportedVersions) == 0 {
		t.Errorf("GetInfo = %+v", info)
	}
	if _, err := client.NotifyRegistrationStatus(ctx, &registration.RegistrationStatus{PluginRegistered: true}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		t.Fatalf("the driver stopped after a successful registration: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// The kubelet learns the plugin is gone from the socket's removal.
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("registration socket left after stop: %v", err)
	}
}

// A refused registration ends Run with the kubelet's reason, so that the
// container restarts and registers again, as node-driver-registrar does.
func TestKubeletRegistrationRefused(t *testing.T) {
	client, _, cancel, done := runRegistering(t)
	defer cancel()
	if _, err := client.NotifyRegistrationStatus(context.Background(), &registration.RegistrationStatus{Error: "version 9 unsupported"}); err != nil {
		t.Fatal(err)
	}
	err := <-done
	if err == nil || !strings.Contains(err.Error(), "version 9 unsupported") {
		t.Fatalf("Run = %v, want the kubelet's refusal", err)
	}
}

func TestKubeletRegistrationNeedsThePath(t *testing.T) {
	_, err := New(Config{Endpoint: "/x.sock", NodeID: "n", StateDir: t.TempDir(), AttachPath: "none", KubeletRegistrationDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "--kubelet-registration-path") {
		t.Fatalf("New = %v, want a request for --kubelet-registration-path", err)
	}
}
