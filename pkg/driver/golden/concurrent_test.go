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

// waiters is how many callers wait for the import of src.
func (im *Importer) waiters(src Source) int {
	im.mu.Lock()
	defer im.mu.Unlock()
	if f := im.flights[src.SHA256+"\x00"+src.URL]; f != nil {
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

// TestImportConcurrentOnce: concurrent imports of one image from one URL
// share one download; a caller that gives up does not stop it for the
// others.
func TestImportConcurrentOnce(t *testing.T) {
	srv := newServer(t)
	im := newImporter(t)
	var started atomic.Int64
	im.Metrics.Started = func() { started.Add(1) }
	src := srv.put("/a.img", rawImage(4<<20, 7))
	release := srv.holdHalf("/a.img")
	defer release()

	const n = 6
	var chans []<-chan result
	chans = append(chans, importAsync(context.Background(), im, src))
	testtools.Within(t, "the first half of the download", srv.sentHalf)
	for i := 1; i < n-1; i++ {
		chans = append(chans, importAsync(context.Background(), im, src))
	}
	quitter, quit := context.WithCancel(context.Background())
	gaveUp := importAsync(quitter, im, src)
	testtools.WaitFor(t, "every caller waiting for the import", func() bool { return im.waiters(src) == n })
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
	if a := srv.count("/a.img"); a != 1 {
		t.Errorf("%d requests, want one", a)
	}
	if started.Load() != 1 {
		t.Errorf("%d imports started", started.Load())
	}
}

// TestImportOtherURLRunsApart: an import of the same image from another
// URL does not wait for (nor share the failure of) a stalled or broken
// mirror: it lands on its own, and the slow one then finds it there.
func TestImportOtherURLRunsApart(t *testing.T) {
	srv := newServer(t)
	im := newImporter(t)
	img := rawImage(4<<20, 3)
	slow := srv.put("/slow.img", img)
	good := srv.put("/good.img", img)
	release := srv.holdHalf("/slow.img")
	defer release()
	slowDone := importAsync(context.Background(), im, slow)
	testtools.Within(t, "the first half of the slow download", srv.sentHalf)
	if _, _, err := im.Import(context.Background(), good); err != nil {
		t.Fatalf("the other URL: %v", err)
	}
	release()
	if r := testtools.Within(t, "the slow import", slowDone); r.err != nil || r.path != im.Path(slow.SHA256) {
		t.Errorf("the slow import: %s, %v", r.path, r.err)
	}
	stale := srv.put("/stale.img", rawImage(4<<20, 4))
	stale.SHA256 = slow.SHA256 // a mirror whose bytes are not the image
	if _, _, err := newImporter(t).Import(context.Background(), stale); !errors.Is(err, ErrInvalid) {
		t.Errorf("a stale mirror: %v, want ErrInvalid", err)
	}
}

// TestImportOutlivesItsCallers: a caller that gives up (a CO's deadline)
// gets its context's error at once while the import goes on; a retry
// finds it done, without a second download. Shutdown, at any step, stops
// an import and leaves nothing behind.
func TestImportOutlivesItsCallers(t *testing.T) {
	srv := newServer(t)
	img := rawImage(4<<20, 8)
	src := srv.put("/a.img", img)

	t.Run("caller gives up", func(t *testing.T) {
		im := newImporter(t)
		release := srv.holdHalf("/a.img")
		defer release()
		ctx, cancel := context.WithCancel(context.Background())
		ch := importAsync(ctx, im, src)
		testtools.Within(t, "the first half of the download", srv.sentHalf)
		cancel()
		if r := testtools.Within(t, "the caller that gave up", ch); !errors.Is(r.err, context.Canceled) {
			t.Errorf("Import: %v", r.err)
		}
		before := srv.count("/a.img")
		retry := importAsync(context.Background(), im, src)
		release()
		if r := testtools.Within(t, "the retry", retry); r.err != nil {
			t.Errorf("the retry: %v", r.err)
		}
		if n := srv.count("/a.img") - before; n != 0 {
			t.Errorf("the retry downloaded again (%d requests)", n)
		}
		im.Shutdown()
	})
	srv.mu.Lock()
	delete(srv.hold, "/a.img")
	srv.mu.Unlock()
	for _, step := range []string{"fetched", "built", "synced"} {
		t.Run("shutdown at "+step, func(t *testing.T) {
			im := newImporter(t)
			im.hook = func(ictx context.Context, s string) {
				if s == step {
					go im.Shutdown()
					testtools.Within(t, "the shutdown to reach the import", ictx.Done())
				}
			}
			if _, _, err := im.Import(context.Background(), src); !errors.Is(err, context.Canceled) {
				t.Errorf("Import: %v", err)
			}
			im.Shutdown()
			assertNothingLeft(t, im, src.SHA256)
			if _, _, err := im.Import(context.Background(), src); !errors.Is(err, errShutdown) {
				t.Errorf("an import after Shutdown: %v", err)
			}
			fresh := newImporter(t)
			fresh.Dir, fresh.TmpDir = im.Dir, im.TmpDir
			if _, _, err := fresh.Import(context.Background(), src); err != nil {
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
