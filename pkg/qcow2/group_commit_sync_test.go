package qcow2

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// clockFile records when each Sync started and ended on a logical clock.
type clockFile struct {
	File
	clock   *atomic.Int64
	mu      sync.Mutex
	syncs   [][2]int64
	active  atomic.Int32
	overlap bool
}

func (f *clockFile) Sync() error {
	if f.active.Add(1) > 1 {
		f.overlap = true
	}
	start := f.clock.Add(1)
	time.Sleep(time.Millisecond)
	end := f.clock.Add(1)
	f.active.Add(-1)
	f.mu.Lock()
	f.syncs = append(f.syncs, [2]int64{start, end})
	f.mu.Unlock()
	return nil
}

// TestSyncGroupCoversCallers: every caller of syncGroup.sync returns only
// after a whole sync ran inside its call (started after the call began),
// syncs never overlap, and callers share them.
func TestSyncGroupCoversCallers(t *testing.T) {
	var clock atomic.Int64
	f := &clockFile{clock: &clock}
	var g syncGroup
	const callers, rounds = 16, 20
	calls := make([][2]int64, callers*rounds)
	var wg sync.WaitGroup
	for c := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				begin := clock.Add(1)
				if err := g.sync(f); err != nil {
					t.Error(err)
				}
				calls[c*rounds+r] = [2]int64{begin, clock.Add(1)}
			}
		}()
	}
	wg.Wait()
	if f.overlap {
		t.Fatal("two syncs ran at once")
	}
	for i, call := range calls {
		covered := false
		for _, s := range f.syncs {
			if s[0] > call[0] && s[1] < call[1] {
				covered = true
				break
			}
		}
		if !covered {
			t.Fatalf("call %d [%d,%d] returned with no sync started inside it", i, call[0], call[1])
		}
	}
	if len(f.syncs) >= len(calls) {
		t.Errorf("%d syncs for %d calls: none shared", len(f.syncs), len(calls))
	}
	t.Logf("%d syncs for %d calls", len(f.syncs), len(calls))
}
