package qcow2_test

// The writers of the live snapshot tests (internal: TestSnapshotLive;
// external: TestFreezeLive): several goroutines write random data, each to
// its own region so that its writes keep their order, while the test takes
// a snapshot in the middle.

import (
	"bytes"
	"io"
	"math/rand"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type liveWrite struct {
	off int64
	p   []byte
}

// liveWriters is the plan of a run: plans[g] are writer g's writes, all
// inside [g*region, (g+1)*region).
type liveWriters struct {
	region int64
	plans  [][]liveWrite
	// before[g] is how many of writer g's writes had returned when the
	// snapshot was called.
	before []int64
}

func newLiveWriters(workers int, region int64, nWrites int) *liveWriters {
	lw := &liveWriters{region: region, plans: make([][]liveWrite, workers)}
	for g := range workers {
		rng := rand.New(rand.NewSource(int64(g)))
		for range nWrites {
			n := 1 + rng.Int63n(min(150000, region))
			p := make([]byte, n)
			rng.Read(p)
			lw.plans[g] = append(lw.plans[g], liveWrite{int64(g)*region + rng.Int63n(region-n+1), p})
		}
	}
	return lw
}

// run lets the writers write to w and calls snapshot once every writer is
// under way (past a quarter of its writes) and none is past half, so that
// every one is mid-stream when it is taken; it returns when all are done.
func (lw *liveWriters) run(t *testing.T, w io.WriterAt, snapshot func() error) {
	t.Helper()
	workers, nWrites := len(lw.plans), int64(len(lw.plans[0]))
	done := make([]atomic.Int64, workers)
	var limit atomic.Int64
	limit.Store(nWrites / 2)
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for g := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i, wr := range lw.plans[g] {
				for int64(i) >= limit.Load() {
					runtime.Gosched()
				}
				if _, err := w.WriteAt(wr.p, wr.off); err != nil {
					errs <- err
					limit.Store(nWrites)
					return
				}
				done[g].Add(1)
			}
		}()
	}
	for g := range workers {
		for done[g].Load() < nWrites/4 && len(errs) == 0 {
			time.Sleep(100 * time.Microsecond)
		}
	}
	lw.before = make([]int64, workers)
	for g := range workers {
		lw.before[g] = done[g].Load()
	}
	limit.Store(nWrites)
	snapErr := snapshot()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if snapErr != nil {
		t.Fatal(snapErr)
	}
}

// apply copies writer g's writes ws into buf, which holds its region.
func (lw *liveWriters) apply(buf []byte, g int, ws []liveWrite) {
	for _, wr := range ws {
		copy(buf[wr.off-int64(g)*lw.region:], wr.p)
	}
}

// checkSnapshot checks the guest content snap taken while the writers ran
// over initial content: in each region it is a prefix of the writer's
// writes that extends the before[g] that had returned. It returns that
// model content.
func (lw *liveWriters) checkSnapshot(t *testing.T, initial, snap []byte) []byte {
	t.Helper()
	model := bytes.Clone(initial)
	for g := range lw.plans {
		lo, hi := int64(g)*lw.region, int64(g+1)*lw.region
		state := bytes.Clone(initial[lo:hi])
		lw.apply(state, g, lw.plans[g][:lw.before[g]])
		k := lw.before[g]
		for !bytes.Equal(state, snap[lo:hi]) && k < int64(len(lw.plans[g])) {
			lw.apply(state, g, lw.plans[g][k:k+1])
			k++
		}
		if !bytes.Equal(state, snap[lo:hi]) {
			t.Errorf("writer %d: the snapshot is no prefix of its writes extending the %d that returned before it was called", g, lw.before[g])
		}
		copy(model[lo:hi], state)
		t.Logf("writer %d: %d writes before the call, %d in the snapshot", g, lw.before[g], k)
	}
	return model
}

// final returns initial with every write applied.
func (lw *liveWriters) final(initial []byte) []byte {
	out := bytes.Clone(initial)
	for g := range lw.plans {
		lw.apply(out[int64(g)*lw.region:int64(g+1)*lw.region], g, lw.plans[g])
	}
	return out
}
