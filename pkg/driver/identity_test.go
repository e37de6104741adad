package driver

import (
	"context"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

// Probe is not ready until the store has been opened and recovered;
// GetPluginInfo names the driver and the build's version.
func TestIdentity(t *testing.T) {
	ctx := context.Background()
	d, err := New(Config{NodeID: "node-1", StateDir: t.TempDir(), Version: "v1.2.3"})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := (identityServer{d: d}).Probe(ctx, &csi.ProbeRequest{}); err != nil || r.GetReady().GetValue() {
		t.Errorf("probe before the store opened: %v %v, want not ready", r, err)
	}
	if _, err := (controllerServer{d: d}).ListVolumes(ctx, &csi.ListVolumesRequest{}); err == nil {
		t.Error("ListVolumes before the store opened: no error")
	}
	d, _ = startDriver(t, Config{})
	if r, err := (identityServer{d: d}).Probe(ctx, &csi.ProbeRequest{}); err != nil || !r.GetReady().GetValue() {
		t.Errorf("probe after: %v %v, want ready", r, err)
	}
	info, err := (identityServer{d: d}).GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
	if err != nil || info.GetName() != DriverName || info.GetVendorVersion() != "test" {
		t.Errorf("plugin info %v %v", info, err)
	}
}
