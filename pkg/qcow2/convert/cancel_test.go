package convert_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2/convert"
)

// patternSource is a large disk that is data everywhere (its map says
// so, and no byte of it is zero), made up as it is read: a copy of it
// writes every request.
type patternSource struct{ size int64 }

func (s patternSource) Size() int64 { return s.size }

func (s patternSource) ReadAt(p []byte, off int64) (int, error) {
	for i := range p {
		p[i] = byte(off+int64(i)) | 1
	}
	return len(p), nil
}

func (s patternSource) Map(off, n int64) ([]qcow2.Extent, error) {
	return []qcow2.Extent{{Start: off, Length: n, Data: true, Present: true, Offset: -1}}, nil
}

// countingTarget is a target that keeps nothing: it counts writes and
// flushes, and calls onWrite after each write.
type countingTarget struct {
	size    int64
	mu      sync.Mutex
	writes  int
	flushes int
	onWrite func(writes int)
}

func (d *countingTarget) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	d.writes++
	n := d.writes
	d.mu.Unlock()
	if d.onWrite != nil {
		d.onWrite(n)
	}
	return len(p), nil
}

func (d *countingTarget) count() (writes, flushes int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.writes, d.flushes
}

func (d *countingTarget) ReadAt(p []byte, off int64) (int, error) { clear(p); return len(p), nil }
func (d *countingTarget) Size() int64                             { return d.size }
func (d *countingTarget) Close() error                            { return nil }
func (d *countingTarget) Info() qcow2.Info                        { return qcow2.Info{Format: "raw", VirtualSize: d.size} }
func (d *countingTarget) Flush() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.flushes++
	return nil
}
func (d *countingTarget) Map(off, n int64) ([]qcow2.Extent, error) {
	return []qcow2.Extent{{Start: off, Length: n, Zero: true, Offset: -1}}, nil
}

// TestRunCancel: cancelling the context of a large copy (64 GiB, 32768
// requests of data) stops it after the commits already running, with the
// context's error, no flush, and progress short of total; a context
// cancelled before Run writes nothing.
func TestRunCancel(t *testing.T) {
	const size = 64 << 30
	for _, outOfOrder := range []bool{false, true} {
		ctx, cancel := context.WithCancel(context.Background())
		dst := &countingTarget{size: size}
		dst.onWrite = func(writes int) {
			if writes == 3 {
				cancel()
			}
		}
		var last int64
		opts := convert.Options{Workers: 4, OutOfOrder: outOfOrder, Progress: func(done, _ int64) { last = done }}
		err := convert.Run(ctx, patternSource{size}, dst, opts)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("outOfOrder=%v: Run returned %v, want context.Canceled", outOfOrder, err)
		}
		// The write that cancelled is the third; each of the other
		// workers may be committing one request already.
		writes, flushes := dst.count()
		if writes > 3+opts.Workers-1 {
			t.Errorf("outOfOrder=%v: %d writes after a cancel at the third", outOfOrder, writes)
		}
		if flushes != 0 {
			t.Errorf("outOfOrder=%v: a cancelled copy flushed the target", outOfOrder)
		}
		if last >= size {
			t.Errorf("outOfOrder=%v: progress reached %d of %d", outOfOrder, last, int64(size))
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	dst := &countingTarget{size: size}
	if err := convert.Run(ctx, patternSource{size}, dst, convert.Options{}); !errors.Is(err, context.Canceled) {
		t.Errorf("a cancelled context: Run returned %v", err)
	}
	if writes, _ := dst.count(); writes != 0 {
		t.Errorf("a cancelled context: %d writes", writes)
	}
}

// TestRunProgressReachesTotal: a whole copy of a data-only source hears
// progress up to total, in order, once the target is flushed; and a
// source with nothing to copy still reports total.
func TestRunProgressReachesTotal(t *testing.T) {
	const size = 256 << 20
	dst := &countingTarget{size: size}
	var calls int
	var last int64
	err := convert.Run(context.Background(), patternSource{size}, dst, convert.Options{
		OutOfOrder: true,
		Progress: func(done, total int64) {
			calls++
			if done < last || total != size {
				t.Errorf("progress %d/%d after %d", done, total, last)
			}
			last = done
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if last != size || calls < size/(2<<20) {
		t.Errorf("progress ended at %d after %d calls, want %d after at least %d", last, calls, size, size/(2<<20))
	}
	if writes, flushes := dst.count(); writes != size/(2<<20) || flushes != 1 {
		t.Errorf("%d writes and %d flushes", writes, flushes)
	}

	empty := &countingTarget{size: size}
	last = 0
	err = convert.Run(context.Background(), empty, &countingTarget{size: size}, convert.Options{
		Progress: func(done, total int64) { last = done },
	})
	if err != nil || last != size {
		t.Errorf("an all-zero source: %v, progress %d", err, last)
	}
}
