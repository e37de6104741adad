package qcow2_test

import (
	"bytes"
	"path/filepath"
	"testing"
	"time"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// BenchmarkDiscard4GiB discards a whole 4 GiB image whose every cluster
// is allocated (4 KiB written into each), as fstrim of an emptied volume
// does, and reports how long the discard held the image: the kernel's
// NBD client gives a request 30 s by default before it calls the
// connection dead, so a discard must stay far below that. It also reports
// the longest a read of a cluster outside the discarded range waited.
func BenchmarkDiscard4GiB(b *testing.B) {
	const size, cs = 4 << 30, 64 << 10
	for range b.N {
		b.StopTimer()
		path := filepath.Join(b.TempDir(), "d.qcow2")
		if err := qcow2.Create(path, qcow2.CreateOptions{Size: size + cs}); err != nil {
			b.Fatal(err)
		}
		img, err := qcow2.Open(path, qcow2.Options{})
		if err != nil {
			b.Fatal(err)
		}
		data := bytes.Repeat([]byte{1}, 4096)
		for off := int64(0); off <= size; off += cs {
			if _, err := img.WriteAt(data, off); err != nil {
				b.Fatal(err)
			}
		}
		if err := img.Flush(); err != nil {
			b.Fatal(err)
		}
		// A reader of the cluster past the range, all the while.
		stop, worst := make(chan struct{}), make(chan time.Duration, 1)
		go func() {
			var w time.Duration
			buf := make([]byte, 4096)
			for {
				select {
				case <-stop:
					worst <- w
					return
				default:
				}
				t0 := time.Now()
				if _, err := img.ReadAt(buf, size); err != nil {
					b.Error(err)
				}
				w = max(w, time.Since(t0))
			}
		}()
		b.StartTimer()
		t0 := time.Now()
		if err := img.Discard(0, size); err != nil {
			b.Fatal(err)
		}
		took := time.Since(t0)
		b.StopTimer()
		close(stop)
		b.ReportMetric(took.Seconds(), "s/discard")
		b.ReportMetric((<-worst).Seconds(), "s-max-read-wait")
		if err := img.Close(); err != nil {
			b.Fatal(err)
		}
	}
}
