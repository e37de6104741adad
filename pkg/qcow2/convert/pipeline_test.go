package convert

import (
	"errors"
	"slices"
	"sync"
	"testing"
	"time"
)

// TestPipelineOrder: in-order commits run in request order however the
// preparations finish; out of order, every request commits once; after
// an error nothing later commits (in order) and run returns the error.
func TestPipelineOrder(t *testing.T) {
	const n = 40
	slow := func(i int) { time.Sleep(time.Duration((i*7)%5) * time.Millisecond) }
	for _, outOfOrder := range []bool{false, true} {
		var mu sync.Mutex
		var got []int
		err := pipeline{workers: 8, outOfOrder: outOfOrder}.run(n, func(i int, _ *[]byte) (func() error, error) {
			slow(i)
			return func() error {
				mu.Lock()
				got = append(got, i)
				mu.Unlock()
				return nil
			}, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if !outOfOrder && !slices.IsSorted(got) {
			t.Errorf("in order: commits ran as %v", got)
		}
		slices.Sort(got)
		if len(got) != n || got[0] != 0 || got[n-1] != n-1 || len(slices.Compact(got)) != n {
			t.Errorf("outOfOrder=%v: commits %v", outOfOrder, got)
		}
	}
	boom := errors.New("boom")
	var got []int
	err := pipeline{workers: 8}.run(n, func(i int, _ *[]byte) (func() error, error) {
		slow(i)
		if i == 10 {
			return nil, boom
		}
		return func() error { got = append(got, i); return nil }, nil
	})
	if !errors.Is(err, boom) {
		t.Errorf("error: %v", err)
	}
	if len(got) > 10 || !slices.Equal(got, []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}[:len(got)]) {
		t.Errorf("commits after a failed request: %v", got)
	}
}
