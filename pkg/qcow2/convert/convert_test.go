package convert_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2/convert"
)

const testSize = 8 << 20

// newImage creates a qcow2 image of size bytes at path and opens it
// writable.
func newImage(t *testing.T, path string, o qcow2.CreateOptions) *qcow2.Image {
	t.Helper()
	if err := qcow2.Create(path, o); err != nil {
		t.Fatal(err)
	}
	img, err := qcow2.Open(path, qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { img.Close() })
	return img
}

// sourceImage writes a qcow2 source with data, zero clusters, a mostly
// zero cluster and holes, and returns it opened and its content.
func sourceImage(t *testing.T, dir string) (*qcow2.Image, []byte) {
	t.Helper()
	img := newImage(t, filepath.Join(dir, "src.qcow2"), qcow2.CreateOptions{Size: testSize})
	want := make([]byte, testSize)
	put := func(off int64, p []byte) {
		if _, err := img.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
		copy(want[off:], p)
	}
	put(0, bytes.Repeat([]byte("golden"), 50000))
	put(3<<20+100, []byte{1, 2, 3})
	put(5<<20, bytes.Repeat([]byte{0xa5}, 1<<20))
	if err := img.WriteZeroes(5<<20+64<<10, 128<<10, true); err != nil {
		t.Fatal(err)
	}
	clear(want[5<<20+64<<10 : 5<<20+192<<10])
	return img, want
}

func readAll(t *testing.T, d qcow2.Disk) []byte {
	t.Helper()
	p := make([]byte, d.Size())
	if _, err := d.ReadAt(p, 0); err != nil {
		t.Fatal(err)
	}
	return p
}

// lastProgress records Options.Progress calls and checks they never go
// back.
type lastProgress struct {
	mu          sync.Mutex
	done, total int64
	calls       int
	t           *testing.T
}

func (p *lastProgress) report(done, total int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if done < p.done {
		p.t.Errorf("progress went back from %d to %d", p.done, done)
	}
	p.done, p.total = done, total
	p.calls++
}

// TestRunModes: every kind of copy reads back byte for byte as the
// source, and its progress ends at total.
func TestRunModes(t *testing.T) {
	t.Run("one-window", testRunModes)
	// The same copies, the source mapped 2 MiB at a time.
	defer convert.SetMapWindow(2 << 20)()
	t.Run("windows", testRunModes)
}

func testRunModes(t *testing.T) {
	dir := t.TempDir()
	src, want := sourceImage(t, dir)
	backing := newImage(t, filepath.Join(dir, "backing.qcow2"), qcow2.CreateOptions{Size: testSize})
	if _, err := backing.WriteAt(bytes.Repeat([]byte{0x77}, 2<<20), 2<<20); err != nil {
		t.Fatal(err)
	}
	if err := backing.Close(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		opts   convert.Options
		target func(t *testing.T, path string) qcow2.Disk
	}{
		{"qcow2", convert.Options{}, qcow2Target(qcow2.CreateOptions{})},
		{"qcow2-one-worker", convert.Options{Workers: 1}, qcow2Target(qcow2.CreateOptions{ClusterSize: 4096})},
		{"qcow2-out-of-order", convert.Options{OutOfOrder: true, SparseSize: 64 << 10}, qcow2Target(qcow2.CreateOptions{})},
		{"raw", convert.Options{}, rawTarget},
		{"raw-write-all", convert.Options{WriteAll: true}, rawTarget},
		{"compressed-zstd", convert.Options{Compress: true}, qcow2Target(qcow2.CreateOptions{CompressionType: "zstd"})},
		{"existing", convert.Options{Existing: true}, func(t *testing.T, path string) qcow2.Disk {
			img := qcow2Target(qcow2.CreateOptions{})(t, path).(*qcow2.Image)
			if _, err := img.WriteAt(bytes.Repeat([]byte{0xee}, testSize), 0); err != nil {
				t.Fatal(err)
			}
			return img
		}},
		{"over-backing", convert.Options{}, func(t *testing.T, path string) qcow2.Disk {
			if err := qcow2.Create(path, qcow2.CreateOptions{Size: testSize, BackingFile: "backing.qcow2", BackingFormat: "qcow2"}); err != nil {
				t.Fatal(err)
			}
			img, err := qcow2.Open(path, qcow2.Options{})
			if err != nil {
				t.Fatal(err)
			}
			return img
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := tc.target(t, filepath.Join(dir, tc.name+".img"))
			defer dst.Close()
			p := &lastProgress{t: t}
			tc.opts.Progress = p.report
			if err := convert.Run(context.Background(), src, dst, tc.opts); err != nil {
				t.Fatal(err)
			}
			if got := readAll(t, dst); !bytes.Equal(got, want) {
				t.Errorf("the target does not read as the source")
			}
			if p.done != testSize || p.total != testSize {
				t.Errorf("last progress %d/%d, want %d/%d", p.done, p.total, testSize, testSize)
			}
		})
	}
}

func qcow2Target(o qcow2.CreateOptions) func(t *testing.T, path string) qcow2.Disk {
	return func(t *testing.T, path string) qcow2.Disk {
		o.Size = testSize
		if err := qcow2.Create(path, o); err != nil {
			t.Fatal(err)
		}
		img, err := qcow2.Open(path, qcow2.Options{NoBacking: true})
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
}

func rawTarget(t *testing.T, path string) qcow2.Disk {
	r := newRawFile(t, path, testSize)
	return r
}

func newRawFile(t *testing.T, path string, size int64) *qcow2.Raw {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	r, err := qcow2.OpenRaw(path, false)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestRunRefuses: options and targets that do not go together are
// refused with ErrOptions before anything is written.
func TestRunRefuses(t *testing.T) {
	dir := t.TempDir()
	src, _ := sourceImage(t, dir)
	raw := newRawFile(t, filepath.Join(dir, "t.raw"), testSize)
	defer raw.Close()
	if err := qcow2.Create(filepath.Join(dir, "over.qcow2"), qcow2.CreateOptions{Size: testSize, BackingFile: "src.qcow2", BackingFormat: "qcow2"}); err != nil {
		t.Fatal(err)
	}
	// Opened without its backing file: a sparse copy would read through.
	over, err := qcow2.Open(filepath.Join(dir, "over.qcow2"), qcow2.Options{NoBacking: true})
	if err != nil {
		t.Fatal(err)
	}
	defer over.Close()
	for _, tc := range []struct {
		name string
		dst  qcow2.Disk
		opts convert.Options
	}{
		{"compress-raw", raw, convert.Options{Compress: true}},
		{"compress-existing", over, convert.Options{Compress: true, Existing: true}},
		{"compress-backing", over, convert.Options{Compress: true}},
		{"backing-not-open", over, convert.Options{}},
		{"sparse-odd", raw, convert.Options{SparseSize: 1000}},
		{"sparse-huge", raw, convert.Options{SparseSize: 32 << 20}},
		{"workers", raw, convert.Options{Workers: convert.MaxWorkers + 1}},
	} {
		if err := convert.Run(context.Background(), src, tc.dst, tc.opts); !errors.Is(err, convert.ErrOptions) {
			t.Errorf("%s: %v, want ErrOptions", tc.name, err)
		}
	}
	for _, d := range []qcow2.Disk{raw, over} {
		if exts, err := d.Map(0, testSize); err != nil || len(exts) != 1 || exts[0].Data {
			t.Errorf("%s was written: %v %+v", d.Info().Filename, err, exts)
		}
	}
	if _, err := convert.Snapshot(raw, convert.SnapshotRef{IDOrName: "x"}); err == nil {
		t.Errorf("a snapshot of a raw file was found")
	}
	if _, err := convert.Snapshot(src, convert.SnapshotRef{IDOrName: "x"}); !errors.Is(err, convert.ErrNoSnapshot) {
		t.Errorf("a missing snapshot: %v", err)
	}
}
