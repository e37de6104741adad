package convert

import (
	"os"
	"sort"
	"sync"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
	"golang.org/x/sys/unix"
)

// readAheadSpans is how many requests ahead of the one being prepared the
// source's data is announced to the kernel.
const readAheadSpans = 16

// readAhead tells the kernel which host ranges of the source files the
// next requests will read (posix_fadvise WILLNEED), so that the disk has
// more reads queued than the workers issue themselves: with a cold page
// cache, a copy is bound by how many reads are in flight. The host ranges
// come from the source's map (each data extent names its file and
// offset); compressed clusters and unmapped ranges are not announced. It
// is only a hint: failures change nothing but speed.
type readAhead struct {
	exts  []qcow2.Extent
	mu    sync.Mutex
	files map[string]*os.File // opened read-only for the hints; nil: failed
}

func newReadAhead(exts []qcow2.Extent) *readAhead {
	return &readAhead{exts: exts, files: map[string]*os.File{}}
}

// prepared is called as request i of spans starts: it announces request
// i+readAheadSpans (and, for the first request, the ones before it).
func (r *readAhead) prepared(spans []span, i int) {
	if r == nil {
		return
	}
	first := i + readAheadSpans
	if i == 0 {
		first = 0
	}
	for j := first; j <= i+readAheadSpans && j < len(spans); j++ {
		if !spans[j].zero {
			r.announce(spans[j].off, spans[j].n)
		}
	}
}

// announce hints the host ranges behind guest [off, off+n).
func (r *readAhead) announce(off, n int64) {
	end := off + n
	k := sort.Search(len(r.exts), func(k int) bool { return r.exts[k].Start+r.exts[k].Length > off })
	for ; k < len(r.exts) && r.exts[k].Start < end; k++ {
		e := r.exts[k]
		if zeroExt(e) || e.Offset < 0 || e.File == "" || e.Compressed {
			continue
		}
		a, b := max(off, e.Start), min(end, e.Start+e.Length)
		if f := r.file(e.File); f != nil {
			_ = unix.Fadvise(int(f.Fd()), e.Offset+(a-e.Start), b-a, unix.FADV_WILLNEED)
		}
	}
}

func (r *readAhead) file(name string) *os.File {
	r.mu.Lock()
	defer r.mu.Unlock()
	f, ok := r.files[name]
	if !ok {
		var err error
		if f, err = os.Open(name); err != nil {
			f = nil
		}
		r.files[name] = f
	}
	return f
}

func (r *readAhead) close() {
	if r == nil {
		return
	}
	for _, f := range r.files {
		if f != nil {
			f.Close()
		}
	}
}
