package golden

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync/atomic"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2/convert"
)

// The published image's shape: a standalone base that QEMU and the
// engine both read, with the engine's default cluster size.
const (
	outputCompat      = "1.1"
	outputClusterSize = 64 << 10
)

// openFetched opens the fetched content at path (already checked against
// its SHA-256) as a disk image: qcow2 under the confining policy and the
// memory budget, or raw. It checks the virtual size against maxSize.
func (im *Importer) openFetched(ctx context.Context, path string) (qcow2.Disk, string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, "", err
	}
	st, err := f.Stat()
	if err == nil {
		var format string
		format, err = probeFormat(f, st.Size())
		f.Close()
		if err != nil {
			return nil, "", err
		}
		d, err := im.openFormat(ctx, path, format)
		return d, format, err
	}
	f.Close()
	return nil, "", err
}

func (im *Importer) openFormat(ctx context.Context, path, format string) (qcow2.Disk, error) {
	var d qcow2.Disk
	if format == FormatQcow2 {
		img, err := qcow2.OpenContext(ctx, path, qcow2.Options{
			ReadOnly:     true,
			NoAutoRepair: true,
			Backing:      qcow2.BackingPolicy{Standalone: true},
			MemoryBudget: im.MemoryBudget,
		})
		if err != nil {
			return nil, sourceErr("the qcow2 image cannot be imported", path, err)
		}
		d = img
	} else {
		raw, err := qcow2.OpenRaw(path, true)
		if err != nil {
			return nil, err
		}
		d = raw
	}
	if size := d.Size(); size > im.maxVirtualSize() {
		d.Close()
		return nil, invalidf("the image's virtual size %d is larger than %d bytes (MaxVirtualSize)", size, im.maxVirtualSize())
	}
	return d, nil
}

// fetchedDisk is the fetched image as the copy reads it: its read and map
// errors say that they are the image's (ErrInvalid) unless the host
// failed.
// boundedTarget is the conversion's target: it refuses writes past the
// expansion bound of the bytes fetched.
type boundedTarget struct {
	qcow2.Disk
	fetched int64
	written atomic.Int64
}

func (t *boundedTarget) WriteAt(p []byte, off int64) (int, error) {
	data := t.written.Add(int64(len(p)))
	if in := max(t.fetched, 1); data > dataFloor && data/in >= maxDataRatio {
		return 0, invalidf("the image expands %d bytes fetched into more than %d bytes of data (over %dx): clusters named by many L2 entries, an expansion bomb", in, data, maxDataRatio)
	}
	return t.Disk.WriteAt(p, off)
}

type fetchedDisk struct{ qcow2.Disk }

func (d fetchedDisk) ReadAt(p []byte, off int64) (int, error) {
	n, err := d.Disk.ReadAt(p, off)
	if err != nil && err != io.EOF {
		err = sourceErr("reading the image", d.Info().Filename, err)
	}
	return n, err
}

func (d fetchedDisk) Map(off, n int64) ([]qcow2.Extent, error) {
	ext, err := d.Disk.Map(off, n)
	if err != nil {
		err = sourceErr("mapping the image", d.Info().Filename, err)
	}
	return ext, err
}

// build writes src into a new standalone qcow2 image at out, closes it and
// checks it clean. The copy's progress goes to rep.
func build(ctx context.Context, src qcow2.Disk, out string, fetched int64, rep *reporter) error {
	size := (src.Size() + 511) / 512 * 512
	if err := qcow2.Create(out, qcow2.CreateOptions{Size: size, ClusterSize: outputClusterSize, Compat: outputCompat}); err != nil {
		return fmt.Errorf("creating %s: %w", out, err)
	}
	dst, err := qcow2.Open(out, qcow2.Options{Backing: qcow2.BackingPolicy{Standalone: true}})
	if err != nil {
		return fmt.Errorf("opening %s: %w", out, err)
	}
	rep.phase(PhaseConvert, src.Size())
	// A qcow2 source expands like a compressed stream: many L2 entries
	// may name one cluster. What the copy writes is bounded as a stream's
	// data is (bombGuard), against the bytes fetched.
	err = convert.Run(ctx, fetchedDisk{src}, &boundedTarget{Disk: dst, fetched: fetched}, convert.Options{
		Progress: func(done, _ int64) { rep.update(done) },
	})
	if cerr := dst.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("closing %s: %w", out, cerr)
	}
	if err != nil {
		return fmt.Errorf("converting the image: %w", err)
	}
	rep.end(src.Size())
	res, err := qcow2.CheckContext(ctx, out, qcow2.CheckOptions{})
	if err != nil {
		return fmt.Errorf("checking %s: %w", out, err)
	}
	if res.CheckErrors != 0 || res.Corruptions != 0 || res.Leaks != 0 {
		return fmt.Errorf("the converted image %s does not check clean: %d errors, %d corruptions, %d leaks", out, res.CheckErrors, res.Corruptions, res.Leaks)
	}
	return nil
}
