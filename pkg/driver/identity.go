package driver

import (
	"context"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

type identityServer struct {
	csi.UnimplementedIdentityServer
	d *Driver
}

func (s identityServer) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: DriverName, VendorVersion: s.d.cfg.Version}, nil
}

func (s identityServer) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	var caps []*csi.PluginCapability
	for _, t := range pluginCaps {
		caps = append(caps, &csi.PluginCapability{Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{Type: t}}})
	}
	return &csi.GetPluginCapabilitiesResponse{Capabilities: caps}, nil
}

// pluginCaps are the services the plugin offers.
var pluginCaps = []csi.PluginCapability_Service_Type{
	csi.PluginCapability_Service_CONTROLLER_SERVICE,
	csi.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS,
	csi.PluginCapability_Service_SNAPSHOT_ACCESSIBILITY_CONSTRAINTS,
}

// Capabilities is what the driver advertises through GetPluginCapabilities,
// ControllerGetCapabilities and NodeGetCapabilities.
type Capabilities struct {
	Plugin     []csi.PluginCapability_Service_Type
	Controller []csi.ControllerServiceCapability_RPC_Type
	Node       []csi.NodeServiceCapability_RPC_Type
}

// AdvertisedCapabilities returns copies of the lists the driver's
// services answer with, for checks that need them without a running
// driver (the deployment tests match the sidecars' flags to them).
func AdvertisedCapabilities() Capabilities {
	return Capabilities{
		Plugin:     append([]csi.PluginCapability_Service_Type(nil), pluginCaps...),
		Controller: append([]csi.ControllerServiceCapability_RPC_Type(nil), controllerCaps...),
		Node:       append([]csi.NodeServiceCapability_RPC_Type(nil), nodeCaps...),
	}
}

// Probe is ready once the store has been opened and recovered.
func (s identityServer) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(s.d.ready())}, nil
}
