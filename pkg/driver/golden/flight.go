package golden

import (
	"context"
	"time"
)

// DefaultMaxImportTime bounds one import, download and conversion.
const DefaultMaxImportTime = 12 * time.Hour

// flight is one running import of a source, shared by every caller that
// asks for the same SHA-256 from the same URL meanwhile.
type flight struct {
	done    chan struct{} // closed when the import has ended and cleaned up
	waiters int           // callers waiting now (im.mu)
	path    string
	info    Info
	err     error
}

// join waits for the import of src, starting it unless one of the same
// URL is running. The import does not end with its callers: a caller
// whose context ends (a CO's deadline, often seconds) gets ctx.Err() at
// once while the import goes on, and the caller's retry joins it or
// finds it published, so that an image of any size lands in the end.
// It ends on success, on its own failure, at MaxImportTime, or at
// Shutdown. Imports of one SHA-256 from two URLs run apart (a stale
// mirror must not fail the other); the first to publish wins and the
// other finds the image there.
func (im *Importer) join(ctx context.Context, src Source, loc location) (string, Info, error) {
	key := src.SHA256 + "\x00" + src.URL
	im.mu.Lock()
	if im.closed {
		im.mu.Unlock()
		return "", Info{}, errShutdown
	}
	if im.flights == nil {
		im.flights = map[string]*flight{}
	}
	f := im.flights[key]
	if f == nil {
		fctx, cancel := context.WithTimeout(im.baseLocked(ctx), im.maxImportTime())
		f = &flight{done: make(chan struct{})}
		im.flights[key] = f
		im.running.Add(1)
		go func() {
			defer im.running.Done()
			f.path, f.info, f.err = im.run(fctx, src, loc)
			cancel()
			im.mu.Lock()
			if im.flights[key] == f {
				delete(im.flights, key)
			}
			im.mu.Unlock()
			close(f.done)
		}()
	}
	f.waiters++
	im.mu.Unlock()
	defer func() {
		im.mu.Lock()
		f.waiters--
		im.mu.Unlock()
	}()
	select {
	case <-f.done:
		return f.path, f.info, f.err
	case <-ctx.Done():
		return "", Info{}, ctx.Err()
	}
}

// baseLocked is the context every import runs under: the first caller's
// values, none of its cancellation, cancelled by Shutdown. im.mu held.
func (im *Importer) baseLocked(ctx context.Context) context.Context {
	if im.stop == nil {
		im.base, im.stop = context.WithCancel(context.Background())
	}
	return mergeValues{Context: im.base, values: ctx}
}

// mergeValues is base's deadline and cancellation with values' values.
type mergeValues struct {
	context.Context
	values context.Context
}

func (c mergeValues) Value(key any) any { return c.values.Value(key) }

// Shutdown stops every import and waits until each has cleaned up; the
// Importer takes no more.
func (im *Importer) Shutdown() {
	im.mu.Lock()
	im.closed = true
	if im.stop != nil {
		im.stop()
	}
	im.mu.Unlock()
	im.running.Wait()
}

func (im *Importer) maxImportTime() time.Duration {
	if im.MaxImportTime <= 0 {
		return DefaultMaxImportTime
	}
	return im.MaxImportTime
}
