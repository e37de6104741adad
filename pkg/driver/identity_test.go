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

// AdvertisedCapabilities says what the services answer.
func TestAdvertisedCapabilities(t *testing.T) {
	ctx := context.Background()
	d := &Driver{}
	caps := AdvertisedCapabilities()
	p, _ := identityServer{d: d}.GetPluginCapabilities(ctx, &csi.GetPluginCapabilitiesRequest{})
	c, _ := controllerServer{d: d}.ControllerGetCapabilities(ctx, &csi.ControllerGetCapabilitiesRequest{})
	n, _ := nodeServer{d: d}.NodeGetCapabilities(ctx, &csi.NodeGetCapabilitiesRequest{})
	if len(p.GetCapabilities()) != len(caps.Plugin) || len(c.GetCapabilities()) != len(caps.Controller) || len(n.GetCapabilities()) != len(caps.Node) {
		t.Fatalf("AdvertisedCapabilities %v differs from the services' answers %v %v %v", caps, p, c, n)
	}
	for i, x := range p.GetCapabilities() {
		if x.GetService().GetType() != caps.Plugin[i] {
			t.Errorf("plugin capability %d: %v, AdvertisedCapabilities says %v", i, x, caps.Plugin[i])
		}
	}
	for i, x := range c.GetCapabilities() {
		if x.GetRpc().GetType() != caps.Controller[i] {
			t.Errorf("controller capability %d: %v, AdvertisedCapabilities says %v", i, x, caps.Controller[i])
		}
	}
	for i, x := range n.GetCapabilities() {
		if x.GetRpc().GetType() != caps.Node[i] {
			t.Errorf("node capability %d: %v, AdvertisedCapabilities says %v", i, x, caps.Node[i])
		}
	}
}

// --attach-path=none makes a driver that attaches nothing, on any host.
func TestAttachPathNone(t *testing.T) {
	p, _, err := chooseAttachPath(attachNone, t.TempDir())
	if err != nil || p.name() != attachNone {
		t.Fatalf("chooseAttachPath(none) = %v, %v", p, err)
	}
	if _, err := p.attach("v-x@n", nil); err == nil {
		t.Fatal("the none attach path attached a volume")
	}
}
