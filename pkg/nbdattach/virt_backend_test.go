package nbdattach

import (
	"sync/atomic"
)

// virtBackend is a large read-only export without storage, for the bounds
// tests and FuzzBlockStatusCache: reads return zeros, and its allocation is
// a fixed pattern of runs of gran bytes (statusAt), so that any range can
// be described without memory. It records the largest requests the server
// made of it.
type virtBackend struct {
	size int64
	gran int64 // allocation granularity, at least 1
	seed uint64
	// gate, when not nil, holds every BlockStatus and ReadAt until it is
	// closed; active counts the calls inside.
	gate   chan struct{}
	active atomic.Int64

	maxStatus  atomic.Int64 // longest range BlockStatus was asked for
	maxRead    atomic.Int64 // longest ReadAt
	readBytes  atomic.Int64
	maxCache   atomic.Int64 // longest Cache (virtCacher)
	cacheBytes atomic.Int64
}

// maxVirtRuns bounds one BlockStatus answer, as a backend may: it
// describes less than it is asked rather than allocating without bound.
const maxVirtRuns = 1 << 16

func newVirt(size, gran int64, seed uint64) *virtBackend {
	return &virtBackend{size: size, gran: max(gran, 1), seed: seed}
}

func (v *virtBackend) Size() int64 { return v.size }
func (v *virtBackend) Caps() Caps  { return Caps{ReadOnly: true, BlockStatus: true, MultiConn: true} }

// statusAt is the allocation of granule i: data, a hole, or zeros.
func (v *virtBackend) statusAt(i int64) Extent {
	switch (uint64(i) + v.seed) * 0x9e3779b97f4a7c15 >> 62 {
	case 0:
		return Extent{Hole: true, Zero: true}
	case 1:
		return Extent{Zero: true}
	}
	return Extent{}
}

func (v *virtBackend) enter() {
	v.active.Add(1)
	if v.gate != nil {
		<-v.gate
	}
}

func (v *virtBackend) leave() { v.active.Add(-1) }

func (v *virtBackend) ReadAt(p []byte, off int64) (int, error) {
	v.enter()
	defer v.leave()
	recordMax(&v.maxRead, int64(len(p)))
	v.readBytes.Add(int64(len(p)))
	clear(p)
	return len(p), nil
}

func (v *virtBackend) BlockStatus(off, n int64) ([]Extent, error) {
	v.enter()
	defer v.leave()
	recordMax(&v.maxStatus, n)
	var out []Extent
	for pos, end := off, off+n; pos < end && len(out) < maxVirtRuns; {
		next := min((pos/v.gran+1)*v.gran, end)
		e := v.statusAt(pos / v.gran)
		if k := len(out) - 1; k >= 0 && out[k].Hole == e.Hole && out[k].Zero == e.Zero {
			out[k].Length += next - pos
		} else {
			e.Length = next - pos
			out = append(out, e)
		}
		pos = next
	}
	return out, nil
}

func (v *virtBackend) WriteAt([]byte, int64) (int, error)        { return 0, ErrReadOnly }
func (v *virtBackend) Flush() error                              { return nil }
func (v *virtBackend) Trim(int64, int64) error                   { return ErrReadOnly }
func (v *virtBackend) WriteZeroes(int64, int64, ZeroFlags) error { return ErrReadOnly }

// virtCacher is a virtBackend with its own Cache method.
type virtCacher struct{ *virtBackend }

func (v virtCacher) Cache(off, n int64) error {
	recordMax(&v.maxCache, n)
	v.cacheBytes.Add(n)
	return nil
}

func recordMax(m *atomic.Int64, v int64) {
	for {
		old := m.Load()
		if v <= old || m.CompareAndSwap(old, v) {
			return
		}
	}
}
