package fuseloop

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
	"github.com/csi-qcow2/csi-qcow2/pkg/nbdattach"
)

// BenchmarkFio runs fio against the device of a FUSE+loop attachment of
// a raw file, and against plain loop devices (direct I/O on and off) over
// the same raw file, one after the other. Each fio job runs for a fixed
// time, so run it once:
//
//	go test -run '^$' -bench Fio -benchtime 1x ./pkg/nbdattach/fuseloop
//
// It reports MB/s and IOPS per job; docs/fuseloop.md records figures.
func BenchmarkFio(b *testing.B) {
	testtools.NeedRoot(b)
	testtools.Need(b, "fio", "losetup")
	const size = 1 << 30
	raw := filepath.Join(b.TempDir(), "disk.raw")
	// Allocated, so that reads measure data, not holes.
	out, err := exec.Command("fio", "--name=fill", "--filename="+raw, "--size=1G", "--rw=write",
		"--bs=1M", "--ioengine=psync", "--end_fsync=1", "--output-format=terse").CombinedOutput()
	if err != nil {
		b.Fatalf("fill: %v\n%s", err, out)
	}
	devs := map[string]func(b *testing.B) string{
		"fuseloop": func(b *testing.B) string {
			fb, err := nbdattach.OpenFileBackend(raw, false)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { fb.Close() })
			a, err := Attach(fb, Options{Dir: filepath.Join(b.TempDir(), "mnt"), Name: "disk", BlockSize: 4096})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() {
				if err := a.Detach(); err != nil {
					b.Error(err)
				}
			})
			return a.Device()
		},
		"rawloop":        func(b *testing.B) string { return losetup(b, raw, "on") },
		"rawloop-cached": func(b *testing.B) string { return losetup(b, raw, "off") },
	}
	jobs := []struct{ name, rw, bs, depth string }{
		{"seqwrite1M", "write", "1M", "8"},
		{"seqread1M", "read", "1M", "8"},
		{"randwrite4K", "randwrite", "4k", "32"},
		{"randread4K", "randread", "4k", "32"},
	}
	// FileBackend reads and writes the raw file through the host's page
	// cache, so rawloop-cached (loop without direct I/O over the file)
	// is the fair comparison; rawloop (direct I/O to the disk) shows
	// what the disk itself does.
	for _, target := range []string{"rawloop", "rawloop-cached", "fuseloop"} {
		b.Run(target, func(b *testing.B) {
			dev := devs[target](b)
			for _, j := range jobs {
				b.Run(j.name, func(b *testing.B) {
					for range b.N {
						bw, iops := fio(b, dev, j.rw, j.bs, j.depth)
						b.ReportMetric(bw/1e6, "MB/s")
						b.ReportMetric(iops, "IOPS")
					}
				})
			}
		})
	}
}

// losetup binds a plain loop device to path with direct I/O on or off.
func losetup(b *testing.B, path, dio string) string {
	out, err := exec.Command("losetup", "--find", "--show", "--direct-io="+dio, "--sector-size=4096", path).Output()
	if err != nil {
		b.Fatal(err)
	}
	dev := strings.TrimSpace(string(out))
	b.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	return dev
}

// fio runs one job on dev for a fixed time and returns bytes/s and IOPS.
func fio(b *testing.B, dev, rw, bs, depth string) (float64, float64) {
	b.Helper()
	cmd := exec.Command("fio", "--name=j", "--filename="+dev, "--rw="+rw, "--bs="+bs,
		"--iodepth="+depth, "--ioengine=libaio", "--direct=1", "--time_based", "--runtime=10",
		"--ramp_time=1", "--randrepeat=0", "--output-format=json")
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		b.Fatalf("fio: %v", err)
	}
	var r struct {
		Jobs []struct {
			Read, Write struct {
				BwBytes float64 `json:"bw_bytes"`
				IOPS    float64 `json:"iops"`
			}
		}
	}
	if err := json.Unmarshal(out, &r); err != nil || len(r.Jobs) != 1 {
		b.Fatalf("fio output: %v\n%s", err, out)
	}
	s := r.Jobs[0].Read
	if strings.Contains(rw, "write") {
		s = r.Jobs[0].Write
	}
	return s.BwBytes, s.IOPS
}
