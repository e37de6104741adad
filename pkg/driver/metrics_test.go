package driver

import (
	"context"
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

// /metrics carries csi-lib-utils' per-call counts and the store's gauges
// for the volumes and snapshots there are.
func TestMetrics(t *testing.T) {
	d, _ := startDriver(t, Config{})
	ctx := context.Background()
	c := controllerServer{d: d}
	v, err := c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-m", VolumeCapabilities: []*csi.VolumeCapability{blockCap()},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 3 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap-m", SourceVolumeId: v.GetVolume().GetVolumeId()}); err != nil {
		t.Fatal(err)
	}
	d.metrics.record("/csi.v1.Controller/CreateVolume", nil, 0)
	srv := httptest.NewServer(d.metrics.handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	id := v.GetVolume().GetVolumeId()
	for _, want := range []string{
		`csi_plugin_operations_seconds_count{driver_name="csi-qcow2.io",grpc_status_code="OK",method_name="/csi.v1.Controller/CreateVolume"}`,
		`csi_qcow2_volume_virtual_bytes{volume_id="` + id + `"} 3.145728e+06`,
		`csi_qcow2_volume_chain_depth{volume_id="` + id + `"} 2`,
		`csi_qcow2_volume_top_allocated_bytes{volume_id="` + id + `"}`,
		`csi_qcow2_snapshots{type="external"} 1`,
		`csi_qcow2_store_layer_files 2`,
		`csi_qcow2_store_free_bytes`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
