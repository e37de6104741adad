package qcow2_test

import (
	"encoding/binary"
	"fmt"
	"math/rand"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// TestLockFreeL2ReadersVsMetadataChanges runs readers, whose L2 lookups
// take no cache lock, against an L2 cache far smaller than the disk (so
// slices are evicted all the time, also by the readers themselves) while
// one goroutine changes the metadata under them: in-place and allocating
// writes, snapshot create/apply/delete, discards and resizes. Every
// cluster holds its own index and a generation in every word, so a reader
// that used a stale or evicted L2 slice (and thus a cluster of another
// guest offset, or a freed L2 table) sees a foreign index or torn content.
// The mutator also checks exact generations after each operation. Run it
// with -race: the lock-free front of the cache must be race-free.
func TestLockFreeL2ReadersVsMetadataChanges(t *testing.T) {
	t.Parallel()
	const (
		cs       = 512
		size     = 4 << 20 // 8192 clusters in 128 L2 tables; the cache holds 32 slices
		clusters = size / cs
		ops      = 120
	)
	path := filepath.Join(t.TempDir(), "race.qcow2")
	if err := qcow2.Create(path, qcow2.CreateOptions{Size: size, ClusterSize: cs}); err != nil {
		t.Fatal(err)
	}
	img, err := qcow2.Open(path, qcow2.Options{L2CacheBytes: 2 * cs, RefcountCacheBytes: cs})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()

	fill := func(c int64, gen uint32) []byte {
		p := make([]byte, cs)
		for w := 0; w < cs; w += 8 {
			binary.LittleEndian.PutUint64(p[w:], uint64(c)<<32|uint64(gen))
		}
		return p
	}
	// check returns the newest generation stored in cluster c's bytes p
	// (0: zeros). A read racing an in-place write of the same cluster may
	// see words of both generations (Linux copies a buffered pread and
	// pwrite of one page without a common lock), so the readers pass
	// mixed; a word of another cluster, or zeros mixed with data, is
	// always wrong. Generations stay below 256, so even a torn word holds
	// one of the two.
	check := func(c int64, p []byte, mixed bool) (uint32, error) {
		first := binary.LittleEndian.Uint64(p)
		newest := uint32(first)
		for w := 8; w < len(p); w += 8 {
			word := binary.LittleEndian.Uint64(p[w:])
			if word == first {
				continue
			}
			if !mixed || word == 0 || first == 0 || word>>32 != first>>32 {
				return 0, fmt.Errorf("cluster %d: torn content (word %d)", c, w/8)
			}
			newest = max(newest, uint32(word))
		}
		if first == 0 {
			return 0, nil
		}
		if got := int64(first >> 32); got != c {
			return 0, fmt.Errorf("cluster %d reads the content of cluster %d", c, got)
		}
		return newest, nil
	}

	var (
		stop    atomic.Bool
		maxGen  atomic.Uint32
		wg      sync.WaitGroup
		errOnce sync.Once
		failed  error
	)
	fail := func(err error) {
		errOnce.Do(func() { failed = err })
		stop.Store(true)
	}
	for r := 0; r < 3; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(r)))
			buf := make([]byte, 4*cs)
			for !stop.Load() {
				c := rng.Int63n(clusters - 4)
				n := int64(1)
				if r == 2 {
					n = 4 // a multi-cluster read takes the range walk
				}
				if _, err := img.ReadAt(buf[:n*cs], c*cs); err != nil {
					fail(fmt.Errorf("read at cluster %d: %w", c, err))
					return
				}
				// Generation g is published before it is written.
				lim := maxGen.Load()
				for k := int64(0); k < n; k++ {
					gen, err := check(c+k, buf[k*cs:(k+1)*cs], true)
					if err == nil && gen > lim {
						err = fmt.Errorf("cluster %d: generation %d was never written", c+k, gen)
					}
					if err != nil {
						fail(err)
						return
					}
				}
			}
		}()
	}

	rng := rand.New(rand.NewSource(1))
	model := make([]uint32, clusters)
	var saved []uint32
	verify := func(what string, touched []int64) {
		for k := range 16 + len(touched) {
			c := rng.Int63n(clusters)
			if k < len(touched) {
				c = touched[k]
			}
			p := make([]byte, cs)
			if _, err := img.ReadAt(p, c*cs); err != nil {
				fail(fmt.Errorf("after %s: %w", what, err))
				return
			}
			gen, err := check(c, p, false)
			if err == nil && gen != model[c] {
				err = fmt.Errorf("after %s: cluster %d has generation %d, want %d", what, c, gen, model[c])
			}
			if err != nil {
				fail(err)
				return
			}
		}
	}
	for i := uint32(1); i <= ops && !stop.Load(); i++ {
		maxGen.Store(i)
		what := "write"
		var touched []int64
		switch op := rng.Intn(10); {
		case op < 6:
			for range 1 + rng.Intn(64) {
				c := rng.Int63n(clusters)
				if _, err := img.WriteAt(fill(c, i), c*cs); err != nil {
					t.Fatal(err)
				}
				model[c] = i
				touched = append(touched, c)
			}
		case op == 6:
			what = "discard"
			c := rng.Int63n(clusters - 64)
			if err := img.Discard(c*cs, 64*cs); err != nil {
				t.Fatal(err)
			}
			clear(model[c : c+64])
		case op == 7 && saved == nil:
			what = "snapshot create"
			if _, err := img.CreateSnapshot("s"); err != nil {
				t.Fatal(err)
			}
			saved = append([]uint32(nil), model...)
		case op == 7:
			what = "snapshot apply"
			if err := img.ApplySnapshot("s"); err != nil {
				t.Fatal(err)
			}
			copy(model, saved)
		case op == 8 && saved != nil:
			what = "snapshot delete"
			if err := img.DeleteSnapshot("s"); err != nil {
				t.Fatal(err)
			}
			saved = nil
		default:
			what = "resize"
			if err := img.Resize(img.Size() + cs*64); err != nil {
				t.Fatal(err)
			}
		}
		// Frees take effect at a flush: freed L2 tables and data clusters
		// are then reused, the case where a stale slice would read wrong.
		if err := img.Flush(); err != nil {
			t.Fatal(err)
		}
		verify(what, touched)
	}
	stop.Store(true)
	wg.Wait()
	if failed != nil {
		t.Fatal(failed)
	}
}
