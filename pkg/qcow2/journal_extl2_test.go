package qcow2_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/crashsim"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// TestJournalExtL2MixedSubclusters: on an extended-L2 overlay, subcluster
// writes into one guest cluster where some need their data durable before
// their mapping (the backing holds data there) and some do not (the
// backing holds zeros). The one that needs it waits in the write journal;
// the later one must not carry its allocation bit (the same L2 entry)
// into the image before that data is durable, nor be undone by the
// journal's older record at a replay. Every crash state of the three
// writes is opened as a power failure (another boot: every byte reads as
// the backing or as the guest wrote it, never zeros that neither holds)
// and as a kill (same boot, all issued writes persisted: every write
// reads back). Issue 9, item 1.
func TestJournalExtL2MixedSubclusters(t *testing.T) {
	const cs, scs, size = 16 << 10, 512, 64 << 10
	base := make([]byte, size)
	for b := range base[:2*scs] { // subclusters 0-1 of cluster 0: data
		base[b] = tag(0, int64(b))
	}
	o := recordOverlay(t, base, qcow2.CreateOptions{ClusterSize: cs, ExtendedL2: true})
	want := slices.Clone(base)
	// Subcluster 2 (zeros below: no sync), 0 (data below: journaled),
	// 4 (zeros below: no sync, the entry the journal holds).
	for seq, sub := range []int64{2, 0, 4} {
		buf := make([]byte, scs)
		for i := range buf {
			buf[i] = tag(seq+1, sub*scs+int64(i))
		}
		if _, err := o.img.WriteAt(buf, sub*scs); err != nil {
			t.Fatal(err)
		}
		copy(want[sub*scs:], buf)
	}
	// Killed here: no Close.
	recs := o.recordings()
	states := crashsim.GroupStates(recs, crashsim.Plan{Seed: 3, ReorderedPerEpoch: 64, Prefixes: 16})
	for _, s := range states {
		boots := [][16]byte{bootB}
		if s.Kind == crashsim.Prefix {
			boots = append(boots, bootA)
		}
		for _, boot := range boots {
			path := o.materialize(t, recs, s, fmt.Sprintf("state-%d-%x.qcow2", s.Index, boot[0]))
			got, err := readGuestOpts(path, qcow2.WithBoot(qcow2.Options{}, boot))
			if err != nil {
				t.Fatalf("%v as boot %x: open: %v", s, boot[0], err)
			}
			killed := boot == bootA && s.Files[0].Crash == len(recs[0].Ops()) && s.Files[1].Crash == len(recs[1].Ops())
			for b := range got {
				if killed && got[b] != want[b] {
					t.Fatalf("%v, a kill after every write: guest byte %d reads %#x, the write left %#x", s, b, got[b], want[b])
				}
				if got[b] != base[b] && got[b] != want[b] {
					t.Fatalf("%v as boot %x: guest byte %d reads %#x: neither the backing's %#x nor the write's %#x", s, boot[0], b, got[b], base[b], want[b])
				}
			}
		}
	}
}

// TestJournalExtL2ConcurrentKill: writers in their own quarters of an
// extended-L2 overlay (journal on, an L2 cache of one slice so that pinned
// slices are evicted and reloaded) make subcluster bursts, partial zeroing,
// discards followed by compressed writes, and whole-cluster writes, while
// snapshots and flushes run beside them; each writer reads its quarter
// back after every operation. Then a last run of subcluster writes with no
// flush, and a kill copy: replayed as the same boot it reads every write,
// and both it and the cleanly closed image check clean. (It failed before
// the fix of issue 9, item 1; written in the review of that fix.)
func TestJournalExtL2ConcurrentKill(t *testing.T) {
	const cs, size, workers = 16 << 10, 4 << 20, 4
	scs := int64(cs / 32)
	rng0 := rand.New(rand.NewPCG(5, 6))
	base := make([]byte, size)
	fillRandom(rng0, base)
	for range 4 * size / cs {
		off := rng0.Int64N(size/scs) * scs
		clear(base[off:min(size, off+scs*(1+rng0.Int64N(3)))])
	}
	dir, path := overlayOn(t, base, qcow2.CreateOptions{ClusterSize: cs, ExtendedL2: true})
	img, err := qcow2.Open(path, qcow2.WithBoot(qcow2.Options{Journal: true, L2CacheBytes: 1}, qcow2.HostBoot()))
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(base)
	part := int64(size / workers)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	bgErr := make(chan error, 1)
	go func() {
		i := 0
		for {
			select {
			case <-stop:
				bgErr <- nil
				return
			default:
			}
			i++
			var err error
			switch i % 7 {
			case 0:
				_, err = img.CreateSnapshot(fmt.Sprintf("s%d", i))
			default:
				err = img.Flush()
			}
			if err != nil {
				bgErr <- err
				return
			}
		}
	}()
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 77))
			lo := int64(w) * part
			for range 250 {
				c := lo/cs + rng.Int64N(part/cs)
				switch p := rng.IntN(20); {
				case p < 14: // a burst of subcluster writes into one cluster
					for range 1 + rng.IntN(4) {
						s := rng.Int64N(32)
						off, n := c*cs+s*scs, scs
						if rng.IntN(3) == 0 {
							n = 1 + rng.Int64N(scs)
							off += rng.Int64N(scs - n + 1)
						}
						buf := make([]byte, n)
						fillRandom(rng, buf)
						if _, err := img.WriteAt(buf, off); err != nil {
							errs <- err
							return
						}
						copy(want[off:], buf)
					}
				case p < 16: // zero some subclusters (maybe partial)
					off := c*cs + rng.Int64N(cs)
					n := 1 + rng.Int64N(min(cs, lo+part-off))
					if err := img.WriteZeroes(off, n, rng.IntN(2) == 0); err != nil {
						errs <- err
						return
					}
					clear(want[off : off+n])
				case p < 18: // discard then compress a whole cluster
					if err := img.Discard(c*cs, cs); err != nil {
						errs <- err
						return
					}
					clear(want[c*cs : (c+1)*cs])
					buf := make([]byte, cs)
					for i := range buf {
						buf[i] = byte(i / 100)
					}
					b, err := img.CompressClusters([]qcow2.CompressedCluster{{Off: c * cs, Data: buf}})
					if err == nil {
						err = img.WriteCompressedBatch(b)
					}
					if err != nil {
						errs <- err
						return
					}
					copy(want[c*cs:], buf)
				default: // whole-cluster write
					buf := make([]byte, cs)
					fillRandom(rng, buf)
					if _, err := img.WriteAt(buf, c*cs); err != nil {
						errs <- err
						return
					}
					copy(want[c*cs:], buf)
				}
				got := make([]byte, part)
				if _, err := img.ReadAt(got, lo); err != nil {
					errs <- err
					return
				}
				if i := firstDiff(got, want[lo:lo+part]); i >= 0 {
					errs <- fmt.Errorf("worker %d: guest offset %d reads %#x, want %#x", w, lo+int64(i), got[i], want[lo+int64(i)])
					return
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if err := <-bgErr; err != nil {
		t.Fatal(err)
	}
	// A last run of single subclusters with nothing flushed, then a kill.
	unflushedThenKill(t, img, dir, want, qcow2.WithBoot(qcow2.Options{}, qcow2.HostBoot()), 300, func(rng *rand.Rand) (int64, int64) {
		return rng.Int64N(size/cs)*cs + rng.Int64N(32)*scs, scs
	})
}
