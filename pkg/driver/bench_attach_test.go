package driver

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/csi-qcow2/csi-qcow2/internal/loopdev"
	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
)

// attachBenchSize is the volume (and the raw file) the attach benchmark
// runs fio on: all of it holds random data first.
const attachBenchSize = 1 << 30

// attachWorkloads are fio's jobs: name, rw, block size, iodepth.
var attachWorkloads = [][4]string{
	{"4K-randread-qd1", "randread", "4k", "1"},
	{"4K-randread-qd32", "randread", "4k", "32"},
	{"4K-randwrite-qd1", "randwrite", "4k", "1"},
	{"4K-randwrite-qd32", "randwrite", "4k", "32"},
	{"1M-seqread-qd8", "read", "1m", "8"},
	{"1M-seqwrite-qd8", "write", "1m", "8"},
}

// BenchmarkAttach runs fio (libaio, O_DIRECT) on the block device a
// staged volume gets on this node's attach path (FUSE + loop here) and,
// in the same run and order, on a loop device with direct I/O over a raw
// file of the same size on the same filesystem: the fastest a loop device
// gets. Both hold random data first. Each row is one fio run of
// $ATTACH_RUNTIME seconds (default 3); -count repeats all rows, and
// scripts/bench-attach.sh turns the output into ratios (make
// bench-attach).
func BenchmarkAttach(b *testing.B) {
	fio := testtools.Need(b, "fio")[0]
	runtime := os.Getenv("ATTACH_RUNTIME")
	if runtime == "" {
		runtime = "3"
	}
	f := newNodeFixtureAt(b, Config{StateDir: filepath.Join(b.TempDir(), "state")})
	c := blockCap()
	v, err := f.c.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: "pvc-bench",
		CapacityRange: &csi.CapacityRange{RequiredBytes: attachBenchSize}, VolumeCapabilities: []*csi.VolumeCapability{c}})
	must(b, err)
	id := v.Volume.VolumeId
	target := f.attachAt(b, id, "bench", c)
	b.Cleanup(func() { f.detachAt(id, "bench") })

	raw := filepath.Join(f.d.cfg.StateDir, "bench.raw")
	fr, err := os.Create(raw)
	must(b, err)
	must(b, fr.Truncate(attachBenchSize))
	must(b, fr.Close())
	rawDev, loop, err := loopdev.Bind(raw, loopdev.Options{DirectIO: true})
	must(b, err)
	b.Cleanup(func() { loop.Close() }) // the binding clears with its last opener

	devs := map[string]string{"attach": target, "raw": rawDev}
	for _, dev := range []string{target, rawDev} {
		runFio(b, fio, dev, "write", "1m", "8", "") // random data everywhere
	}
	for _, w := range attachWorkloads {
		for _, variant := range []string{"attach", "raw"} {
			b.Run(w[0]+"/"+variant, func(b *testing.B) {
				iops, mbps := runFio(b, fio, devs[variant], w[1], w[2], w[3], runtime)
				b.ReportMetric(1e9/iops, "ns/op")
				b.ReportMetric(mbps, "MB/s")
			})
		}
	}
}

// runFio runs one fio job on dev for runtime seconds ("": once over the
// whole device) and returns its IOPS and MB/s.
func runFio(b *testing.B, fio, dev, rw, bs, depth, runtime string) (iops, mbps float64) {
	b.Helper()
	args := []string{"--name=bench", "--filename=" + dev, "--ioengine=libaio", "--direct=1",
		"--rw=" + rw, "--bs=" + bs, "--iodepth=" + depth, "--randrepeat=0", "--refill_buffers",
		"--size=" + strconv.Itoa(attachBenchSize), "--output-format=terse", "--terse-version=3"}
	if runtime != "" {
		args = append(args, "--runtime="+runtime, "--time_based")
	}
	out, err := exec.Command(fio, args...).CombinedOutput()
	if err != nil {
		b.Fatalf("fio %s on %s: %v\n%s", rw, dev, err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	fields := strings.Split(lines[len(lines)-1], ";")
	bwField, iopsField := 6, 7 // read
	if strings.Contains(rw, "write") {
		bwField, iopsField = 47, 48
	}
	if len(fields) <= iopsField {
		b.Fatalf("fio's terse output: %q", out)
	}
	bw, err1 := strconv.ParseFloat(fields[bwField], 64) // KiB/s
	iops, err2 := strconv.ParseFloat(fields[iopsField], 64)
	if err1 != nil || err2 != nil || iops <= 0 {
		b.Fatalf("fio's terse output: %q", out)
	}
	return iops, bw * 1024 / 1e6
}
