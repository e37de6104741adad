package qcow2_test

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// faultPlan counts the mutating I/O (write, durable write, sync, truncate,
// punch, directory sync) of every file of one workload, in order, and
// fails the one numbered at (from 1) with errno. It remembers the engine's
// source line that issued each operation: its I/O site.
type faultPlan struct {
	mu     sync.Mutex
	at     int
	errno  syscall.Errno
	n      int
	fired  string         // the site of the failed operation, "" until then
	inFile *faultFile     // the file it failed, nil for a directory sync
	sites  map[string]int // operations seen per site
	seq    []string       // the site of each operation, in order
	files  []*faultFile
}

func newFaultPlan(at int, errno syscall.Errno) *faultPlan {
	return &faultPlan{at: at, errno: errno, sites: map[string]int{}}
}

// step counts one operation of kind and reports whether it must fail.
func (p *faultPlan) step(kind string, f *faultFile) bool {
	site := ioSite() + " " + kind
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n++
	p.sites[site]++
	p.seq = append(p.seq, site)
	if p.n == p.at {
		p.fired, p.inFile = site, f
		return true
	}
	return false
}

// failedFile is the file the fault hit, nil if none or a directory.
func (p *faultPlan) failedFile() *faultFile {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.inFile
}

func (p *faultPlan) didFire() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.fired
}

// hooks returns opts whose files and directory syncs go through p.
func (p *faultPlan) hooks(opts qcow2.Options) qcow2.Options {
	return qcow2.WithFileHooks(opts, p.wrap, p.syncDir)
}

func (p *faultPlan) wrap(path string, f qcow2.File) qcow2.File {
	ff, err := newFaultFile(p, path, f)
	if err != nil {
		panic(err) // a test helper's own I/O on a temporary file
	}
	p.mu.Lock()
	p.files = append(p.files, ff)
	p.mu.Unlock()
	return ff
}

func (p *faultPlan) syncDir(dir string) error {
	if p.step("dirsync", nil) {
		return p.errno
	}
	return nil // names are not modelled: a power failure keeps them
}

// ioSite is "file.go:line" of the innermost engine frame that is not the
// File plumbing itself (file.go, sync_guard.go, file_hooks.go) or this
// test: the line whose call reached the file.
func ioSite() string {
	pcs := make([]uintptr, 32)
	frames := runtime.CallersFrames(pcs[:runtime.Callers(3, pcs)])
	for {
		fr, more := frames.Next()
		base := filepath.Base(fr.File)
		if strings.Contains(fr.Function, "/pkg/qcow2.") && !strings.HasSuffix(base, "_test.go") && !ioPlumbing[base] {
			return fmt.Sprintf("%s:%d", base, fr.Line)
		}
		if !more {
			return "unknown"
		}
	}
}

// ioPlumbing: the engine's files that pass I/O on rather than issue it.
var ioPlumbing = map[string]bool{"file.go": true, "sync_guard.go": true, "file_hooks.go": true}

// span is a byte range [off, end).
type span struct{ off, end int64 }

// faultFile is a host file seen through a faultPlan. Beside the file it
// keeps what a power failure would leave of it (durable), as Linux
// behaves: a sync makes the ranges written since the last one durable; a
// failed sync marks them clean without writing them (their pages may be
// dropped and read back old), so no later sync makes them durable.
type faultFile struct {
	qcow2.File
	plan *faultPlan
	ino  uint64

	mu       sync.Mutex
	durable  []byte
	dirty    []span
	poisoned []span // dirty at a failed sync: their pages may read old
}

func newFaultFile(p *faultPlan, path string, f qcow2.File) (*faultFile, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	cur, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return &faultFile{File: f, plan: p, ino: st.Sys().(*syscall.Stat_t).Ino, durable: cur}, nil
}

// Unwrap lets the engine reach the host file (a Freeze needs it).
func (f *faultFile) Unwrap() qcow2.File { return f.File }

func (f *faultFile) markDirty(off, n int64) {
	f.mu.Lock()
	f.dirty = append(f.dirty, span{off, off + n})
	f.mu.Unlock()
}

func (f *faultFile) WriteAt(p []byte, off int64) (int, error) {
	if f.plan.step("write", f) {
		return 0, f.plan.errno
	}
	n, err := f.File.WriteAt(p, off)
	f.markDirty(off, int64(n))
	return n, err
}

// WriteAtDurable, failed, reached the page cache but not the disk: its
// sync half failed (with ENOSPC too: a thin or network filesystem out of
// space reports it from writeback), and so did the writeback of whatever
// else was dirty, as a failed Sync.
func (f *faultFile) WriteAtDurable(p []byte, off int64) error {
	if f.plan.step("dsync-write", f) {
		if _, err := f.File.WriteAt(p, off); err != nil {
			return err
		}
		f.mu.Lock()
		f.poisoned = append(f.poisoned, f.dirty...)
		f.poisoned = append(f.poisoned, span{off, off + int64(len(p))})
		f.dirty = nil
		f.mu.Unlock()
		return f.plan.errno
	}
	// The model says what is durable; the host file need not be.
	if _, err := f.File.WriteAt(p, off); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if end := off + int64(len(p)); end > int64(len(f.durable)) {
		f.durable = append(f.durable, make([]byte, end-int64(len(f.durable)))...)
	}
	copy(f.durable[off:], p)
	return nil
}

func (f *faultFile) Sync() error {
	if f.plan.step("sync", f) {
		f.mu.Lock()
		f.poisoned = append(f.poisoned, f.dirty...)
		f.dirty = nil // marked clean, never written
		f.mu.Unlock()
		return f.plan.errno
	}
	return f.settle()
}

// settle copies the dirty ranges into durable, at the file's size.
func (f *faultFile) settle() error {
	size, err := f.File.Size()
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	d := make([]byte, size)
	copy(d, f.durable)
	for _, s := range f.dirty {
		s.end = min(s.end, size)
		if s.off >= s.end {
			continue
		}
		if _, err := f.File.ReadAt(d[s.off:s.end], s.off); err != nil {
			return err
		}
	}
	f.durable, f.dirty = d, nil
	return nil
}

func (f *faultFile) Truncate(size int64) error {
	if f.plan.step("truncate", f) {
		return f.plan.errno
	}
	if err := f.File.Truncate(size); err != nil {
		return err
	}
	f.markDirty(size, 0)
	return nil
}

func (f *faultFile) PunchHole(off, n int64) error {
	if f.plan.step("punch", f) {
		return f.plan.errno
	}
	if err := f.File.PunchHole(off, n); err != nil {
		return err
	}
	f.markDirty(off, n)
	return nil
}

// durableCopy is what a power failure now would leave of the file.
func (f *faultFile) durableCopy() []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]byte(nil), f.durable...)
}

// evicted is cur (the file as the kernel has it) after the kernel dropped
// the pages a failed sync could not write, outside the first keep bytes
// (those stayed cached): they read as what the disk holds.
func (f *faultFile) evicted(cur []byte, keep int64) []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := slices.Clone(cur)
	disk := make([]byte, len(out))
	copy(disk, f.durable)
	for _, s := range f.poisoned {
		s.off, s.end = max(s.off, keep), min(s.end, int64(len(out)))
		if s.off < s.end {
			copy(out[s.off:s.end], disk[s.off:s.end])
		}
	}
	return out
}

// fileByInode returns the plan's file with inode ino: the names move
// during a Freeze, the inodes do not.
func (p *faultPlan) fileByInode(ino uint64) *faultFile {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := len(p.files) - 1; i >= 0; i-- {
		if p.files[i].ino == ino {
			return p.files[i]
		}
	}
	return nil
}
