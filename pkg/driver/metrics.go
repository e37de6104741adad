package driver

import (
	"net/http"
	"sync"
	"time"

	"github.com/kubernetes-csi/csi-lib-utils/metrics"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/csi-qcow2/csi-qcow2/pkg/driver/store"
)

// driverMetrics are the driver's Prometheus metrics: csi-lib-utils'
// per-operation counts and latencies, and the store's own (per-volume
// sizes and chain depths, imports, health), read from the store at each
// scrape.
type driverMetrics struct {
	csi      metrics.CSIMetricsManager
	reg      *prometheus.Registry
	imports  *prometheus.CounterVec
	imported prometheus.Counter
	health   func(id string, c store.Condition)
}

func newMetrics(d *Driver) *driverMetrics {
	m := &driverMetrics{
		csi: metrics.NewCSIMetricsManagerForPlugin(DriverName),
		reg: prometheus.NewRegistry(),
		imports: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "csi_qcow2_image_imports_total",
			Help: "Golden image imports, by result (ok, failed).",
		}, []string{"result"}),
		imported: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "csi_qcow2_image_import_bytes_total",
			Help: "Bytes downloaded by golden image imports.",
		}),
	}
	unhealthy := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "csi_qcow2_volume_abnormal",
		Help: "1 while the last health check of a volume found it abnormal, by reason.",
	}, []string{"volume_id", "reason"})
	var mu sync.Mutex
	last := map[string]string{}
	m.health = func(id string, c store.Condition) {
		mu.Lock()
		defer mu.Unlock()
		if r, ok := last[id]; ok {
			unhealthy.DeleteLabelValues(id, r)
			delete(last, id)
		}
		if c.Abnormal {
			unhealthy.WithLabelValues(id, c.Reason).Set(1)
			last[id] = c.Reason
		}
	}
	attach := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "csi_qcow2_node_attach_path",
		Help: "1 for the attach path this node's staged volumes use (nbd: the kernel's nbd driver; fuse: a FUSE file under a loop device).",
	}, []string{"path"})
	attach.WithLabelValues(d.path.name()).Set(1)
	m.reg.MustRegister(m.imports, m.imported, unhealthy, attach, storeCollector{d})
	m.csi.WithAdditionalRegistry(m.reg)
	return m
}

// record counts one CSI call.
func (m *driverMetrics) record(method string, err error, took time.Duration) {
	m.csi.RecordMetrics(method, err, took)
}

// MetricsHandler serves the driver's Prometheus metrics at /metrics, as
// --metrics-address does (the demo reads them in-process).
func (d *Driver) MetricsHandler() http.Handler { return d.metrics.handler() }

// handler serves /metrics.
func (m *driverMetrics) handler() http.Handler {
	mux := http.NewServeMux()
	m.csi.RegisterToServer(mux, "/metrics")
	return mux
}

var (
	volumeVirtual = prometheus.NewDesc("csi_qcow2_volume_virtual_bytes",
		"The size of a volume as its user sees it.", []string{"volume_id"}, nil)
	volumeAllocated = prometheus.NewDesc("csi_qcow2_volume_top_allocated_bytes",
		"Bytes a volume's writable top occupies on disk.", []string{"volume_id"}, nil)
	volumeDepth = prometheus.NewDesc("csi_qcow2_volume_chain_depth",
		"Files in a volume's chain, top included.", []string{"volume_id"}, nil)
	storeLayers = prometheus.NewDesc("csi_qcow2_store_layer_files",
		"Layer files in the store (tops and frozen layers).", nil, nil)
	storeBytes = prometheus.NewDesc("csi_qcow2_store_allocated_bytes",
		"Bytes the store's layer and image files occupy on disk.", nil, nil)
	storeFree = prometheus.NewDesc("csi_qcow2_store_free_bytes",
		"Free bytes of the store's filesystem.", nil, nil)
	snapshotCount = prometheus.NewDesc("csi_qcow2_snapshots",
		"Snapshots in the store, by type.", []string{"type"}, nil)
)

// storeCollector reads the store at scrape time.
type storeCollector struct{ d *Driver }

func (c storeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{volumeVirtual, volumeAllocated, volumeDepth, storeLayers, storeBytes, storeFree, snapshotCount} {
		ch <- d
	}
}

func (c storeCollector) Collect(ch chan<- prometheus.Metric) {
	st, err := c.d.store()
	if err != nil {
		return
	}
	for _, v := range st.ListVolumes() {
		ch <- prometheus.MustNewConstMetric(volumeVirtual, prometheus.GaugeValue, float64(v.Capacity), v.ID)
		ch <- prometheus.MustNewConstMetric(volumeAllocated, prometheus.GaugeValue, float64(v.TopBytes), v.ID)
		ch <- prometheus.MustNewConstMetric(volumeDepth, prometheus.GaugeValue, float64(v.Depth), v.ID)
	}
	byType := map[string]int{store.TypeExternal: 0, store.TypeInternal: 0}
	for _, sn := range st.ListSnapshots() {
		byType[sn.Type]++
	}
	for t, n := range byType {
		ch <- prometheus.MustNewConstMetric(snapshotCount, prometheus.GaugeValue, float64(n), t)
	}
	if u, err := st.Usage(); err == nil {
		ch <- prometheus.MustNewConstMetric(storeLayers, prometheus.GaugeValue, float64(u.LayerFiles))
		ch <- prometheus.MustNewConstMetric(storeBytes, prometheus.GaugeValue, float64(u.AllocatedBytes))
		ch <- prometheus.MustNewConstMetric(storeFree, prometheus.GaugeValue, float64(u.FreeBytes))
	}
}
