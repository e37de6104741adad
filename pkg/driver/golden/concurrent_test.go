package golden

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
)

// waiters is how many callers wait for the import of sha.
func (im *Importer) waiters(sha string) int {
	im.mu.Lock()
	defer im.mu.Unlock()
	if f := im.flights[sha]; f != nil {
		return f.waiters
	}
	return 0
}

type result struct {
	path string
	info Info
	err  error
}

// importAsync runs Import on its own goroutine.
func importAsync(ctx context.Context, im *Importer, src Source) <-chan result {
	ch := make(chan result, 1)
	go func() {
		path, info, err := im.Import(ctx, src)
		ch <- result{path, info, err}
	}()
	return ch
}

// TestImportConcurrentOnce: concurrent imports of one image, by two
// URLs, share one download; a caller that gives up does not stop it for
// the others.
func TestImportConcurrentOnce(t *testing.T) {
	srv := newServer(t)
	im := newImporter(t)
	var started atomic.Int64
	im.Metrics.Started = func() { started.Add(1) }
	img := rawImage(4<<20, 7)
	src := srv.put("/a.img", img)
	other := srv.put("/b.img", img)
	release := srv.holdHalf("/a.img")
	defer release()

	const n = 6
	var chans []<-chan result
	chans = append(chans, importAsync(context.Background(), im, src))
	testtools.Within(t, "the first half of the download", srv.sentHalf)
	for i := 1; i < n-1; i++ {
		s := src
		if i%2 == 0 {
			s = other
		}
		chans = append(chans, importAsync(context.Background(), im, s))
	}
	quitter, quit := context.WithCancel(context.Background())
	gaveUp := importAsync(quitter, im, src)
	testtools.WaitFor(t, "every caller waiting for the import", func() bool { return im.waiters(src.SHA256) == n })
	quit()
	if r := testtools.Within(t, "the caller that gave up", gaveUp); !errors.Is(r.err, context.Canceled) {
		t.Errorf("the caller that gave up: %v", r.err)
	}
	release()
	for i, ch := range chans {
		r := testtools.Within(t, "an import", ch)
		if r.err != nil || r.path != im.Path(src.SHA256) {
			t.Errorf("caller %d: %s, %v", i, r.path, r.err)
		}
	}
	if a, b := srv.count("/a.img"), srv.count("/b.img"); a != 1 || b != 0 {
		t.Errorf("%d and %d requests, want one in all", a, b)
	}
	if started.Load() != 1 {
		t.Errorf("%d imports started", started.Load())
	}
}

// TestImportCancelled: an import whose every caller gives up, while it
// downloads or at any later step, stops and leaves nothing behind; a
// later import starts afresh.
func TestImportCancelled(t *testing.T) {
	srv := newServer(t)
	img := rawImage(4<<20, 8)
	src := srv.put("/a.img", img)

	t.Run("download", func(t *testing.T) {
		im := newImporter(t)
		release := srv.holdHalf("/a.img")
		defer release()
		ctx, cancel := context.WithCancel(context.Background())
		ch := importAsync(ctx, im, src)
		testtools.Within(t, "the first half of the download", srv.sentHalf)
		cancel()
		if r := testtools.Within(t, "the cancelled import", ch); !errors.Is(r.err, context.Canceled) {
			t.Errorf("Import: %v", r.err)
		}
		assertNothingLeft(t, im, src.SHA256)
	})
	srv.mu.Lock()
	delete(srv.hold, "/a.img")
	srv.mu.Unlock()
	for _, step := range []string{"fetched", "built", "synced"} {
		t.Run(step, func(t *testing.T) {
			im := newImporter(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			im.hook = func(ictx context.Context, s string) {
				if s == step {
					cancel()
					// The import goes on until its caller's cancel
					// reaches it.
					testtools.Within(t, "the cancel to reach the import", ictx.Done())
				}
			}
			if _, _, err := im.Import(ctx, src); !errors.Is(err, context.Canceled) {
				t.Errorf("Import: %v", err)
			}
			assertNothingLeft(t, im, src.SHA256)
			im.hook = nil
			if _, _, err := im.Import(context.Background(), src); err != nil {
				t.Errorf("the import after: %v", err)
			}
		})
	}
}

// TestImportStalled: a server that stops sending is given up on, with a
// transient error, and nothing is left.
func TestImportStalled(t *testing.T) {
	srv := newServer(t)
	im := newImporter(t)
	im.stall = 100 * time.Millisecond
	src := srv.put("/a.img", rawImage(1<<20, 9))
	release := srv.holdHalf("/a.img")
	defer release()
	_, _, err := im.Import(context.Background(), src)
	if err == nil || errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "sent nothing") {
		t.Errorf("Import: %v; want a transient error for a stalled server", err)
	}
	assertNothingLeft(t, im, src.SHA256)
}

// TestImportMetricsAndProgress: Metrics hear one start and one finish
// per import, with its bytes; Progress calls of one phase come at least
// a second apart (on the Importer's clock) but for the last.
func TestImportMetricsAndProgress(t *testing.T) {
	srv := newServer(t)
	im := newImporter(t)
	var mu sync.Mutex
	var clock time.Time
	im.now = func() time.Time { // 100 ms per reading
		mu.Lock()
		defer mu.Unlock()
		clock = clock.Add(100 * time.Millisecond)
		return clock
	}
	var calls []Progress
	var stamps []time.Time
	im.Progress = func(p Progress) {
		calls = append(calls, p)
		mu.Lock()
		stamps = append(stamps, clock)
		mu.Unlock()
	}
	var finished []error
	var bytes int64
	im.Metrics.Finished = func(info Info, err error) { finished = append(finished, err); bytes += info.DownloadedBytes }
	img := rawImage(8<<20, 10)
	src := srv.put("/a.img", img)
	if _, _, err := im.Import(context.Background(), src); err != nil {
		t.Fatal(err)
	}
	wantInvalid(t, im, Source{URL: src.URL, SHA256: sum(nil)}, "checksum mismatch")
	if len(finished) != 2 || finished[0] != nil || !errors.Is(finished[1], ErrInvalid) || bytes != 2*int64(len(img)) {
		t.Errorf("Finished: %v, %d bytes", finished, bytes)
	}
	var last = map[string]time.Time{}
	var finals []string
	for i, p := range calls {
		if p.Final {
			finals = append(finals, p.Phase)
			if p.Done != int64(len(img)) {
				t.Errorf("final %s progress: %+v", p.Phase, p)
			}
		} else if prev, ok := last[p.Phase]; ok && stamps[i].Sub(prev) < progressInterval {
			t.Errorf("progress %d (%+v) %v after the one before", i, p, stamps[i].Sub(prev))
		}
		last[p.Phase] = stamps[i]
		if p.SHA256 == "" || p.URL != src.URL || p.BytesPerSecond <= 0 && p.Done > 0 {
			t.Errorf("progress %+v", p)
		}
	}
	if strings.Join(finals, ",") != "download,convert,download" {
		t.Errorf("final calls for phases %v", finals)
	}
}
