package demo

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

// row is one step of the report.
type row struct {
	step string
	took time.Duration
	note string
}

func (r *run) printRow(x row) {
	if len(r.rows) == 1 {
		fmt.Fprintf(r.opts.Out, "%-40s %9s  %s\n", "step", "took", "what happened")
	}
	fmt.Fprintf(r.opts.Out, "%-40s %9s  %s\n", x.step, x.took.Round(100*time.Microsecond), x.note)
}

// volumeTable prints each volume's virtual size, what its own top
// occupies and its chain's files, from the driver's Prometheus metrics
// (what an operator scrapes).
func (r *run) volumeTable(ctx context.Context, vols map[string]*csi.Volume) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	rec := httptest.NewRecorder()
	r.d.MetricsHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		return fmt.Errorf("metrics: HTTP %d", rec.Code)
	}
	m := parseVolumeMetrics(rec.Body)
	names := make([]string, 0, len(vols))
	for name := range vols {
		names = append(names, name)
	}
	slices.Sort(names)
	fmt.Fprintln(r.opts.Out)
	tw := tabwriter.NewWriter(r.opts.Out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "volume\tvirtual\tits own top holds\tfiles in its chain\t")
	for _, name := range names {
		v := m[vols[name].VolumeId]
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t\n", name, mib(int64(v["csi_qcow2_volume_virtual_bytes"])),
			mib(int64(v["csi_qcow2_volume_top_allocated_bytes"])), int(v["csi_qcow2_volume_chain_depth"]))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(r.opts.Out)
	return nil
}

// parseVolumeMetrics reads the csi_qcow2_volume_* samples of a metrics
// page: volume ID -> metric name -> value.
func parseVolumeMetrics(page io.Reader) map[string]map[string]float64 {
	out := map[string]map[string]float64{}
	sc := bufio.NewScanner(page)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "csi_qcow2_volume_") {
			continue
		}
		name, rest, ok := strings.Cut(line, "{")
		if !ok {
			continue
		}
		labels, value, ok := strings.Cut(rest, "} ")
		if !ok {
			continue
		}
		id := labelValue(labels, "volume_id")
		f, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if id == "" || err != nil {
			continue
		}
		if out[id] == nil {
			out[id] = map[string]float64{}
		}
		out[id][name] = f
	}
	return out
}

func labelValue(labels, key string) string {
	for _, kv := range strings.Split(labels, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if ok && k == key {
			if s, err := strconv.Unquote(v); err == nil {
				return s
			}
		}
	}
	return ""
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// syncWriter serializes the driver's log writes into one buffer.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}
