package driver

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
)

// startDriver runs a driver on a temporary store and socket until the
// test ends, and returns it once its store is ready.
func startDriver(t testing.TB, cfg Config) (*Driver, string) {
	t.Helper()
	dir := t.TempDir()
	if cfg.StateDir == "" {
		cfg.StateDir = filepath.Join(dir, "state")
	}
	if cfg.NodeID == "" {
		cfg.NodeID = "node-1"
	}
	sock := filepath.Join(dir, "csi.sock")
	cfg.Endpoint = "unix://" + sock
	cfg.Version = "test"
	if cfg.AttachPath == "" {
		// The VM test bed asks for nbd: a kernel path that fell back to
		// FUSE would pass for the wrong reason.
		cfg.AttachPath = os.Getenv("CSI_QCOW2_ATTACH_PATH")
	}
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	testtools.WaitFor(t, "the driver's store is ready", d.ready)
	return d, sock
}
