// Package crashsim records the write/flush stream a storage engine sends to
// its file and rebuilds the states that file could be in after a crash.
//
// A Recorder is an in-memory file (it has the method set of qcow2.File, so
// the engine can run on it) that remembers every mutating operation in
// order: WriteAt, Truncate, PunchHole and the Sync barriers between them.
// A Recording then yields crash states:
//
//   - Boundary: the file exactly as the k-th completed Sync left it.
//   - Reordered: a power failure inside a flush epoch. Every operation of
//     the epoch that was issued before the crash point may or may not have
//     reached the disk, in any order, and a write that spans several
//     512-byte sectors may have reached it only in part (a torn write).
//   - Prefix: the process was killed after the first N operations; the
//     host kernel keeps every operation it was handed, in order.
//
// Every state is deterministic from the recording, the seed and its index,
// so a failing state can be rebuilt alone.
//
// The package must not import pkg/qcow2 (the engine's tests import it).
package crashsim

import (
	"errors"
	"fmt"
	"io"
	"sync"
)

// SectorSize is the granularity of torn writes: a write persists, or not,
// one aligned 512-byte sector at a time.
const SectorSize = 512

// File has the method set of qcow2.File.
type File interface {
	io.ReaderAt
	io.WriterAt
	Sync() error
	Size() (int64, error)
	Truncate(size int64) error
	PunchHole(off, n int64) error
	Close() error
}

// ErrClosed is returned by a Recorder used after Close (until Reopen).
var ErrClosed = errors.New("crashsim: file is closed")

// OpKind names a recorded operation.
type OpKind uint8

const (
	OpWrite OpKind = iota + 1
	OpTruncate
	OpPunch
	OpSync
)

func (k OpKind) String() string {
	switch k {
	case OpWrite:
		return "write"
	case OpTruncate:
		return "truncate"
	case OpPunch:
		return "punch"
	case OpSync:
		return "sync"
	}
	return fmt.Sprintf("op(%d)", uint8(k))
}

// Op is one recorded operation.
type Op struct {
	Kind OpKind
	// Off is the offset of a write or punch; the new size for a truncate.
	Off int64
	// N is the length of a punch (and of a write: len(Data)).
	N    int64
	Data []byte // OpWrite only
	// Durable marks a write issued with O_DSYNC semantics (WriteAtDurable):
	// when it returned, its bytes and the file size they need were on
	// disk, but nothing else unsynced was.
	Durable bool
	// Seq places the operation in the order of every Recorder sharing a
	// Clock (group.go); without a Clock it is the operation's index.
	Seq int64
}

func (o Op) String() string {
	switch o.Kind {
	case OpWrite:
		if o.Durable {
			return fmt.Sprintf("dsync write [%d,+%d)", o.Off, len(o.Data))
		}
		return fmt.Sprintf("write [%d,+%d)", o.Off, len(o.Data))
	case OpPunch:
		return fmt.Sprintf("punch [%d,+%d)", o.Off, o.N)
	case OpTruncate:
		return fmt.Sprintf("truncate %d", o.Off)
	}
	return o.Kind.String()
}

// Recorder is an in-memory File that records every mutating operation.
// Reads see the latest state, as reads through the page cache do. It is
// safe for concurrent use; concurrent operations are recorded in the order
// they take the lock.
type Recorder struct {
	mu     sync.Mutex
	base   []byte
	cur    []byte
	ops    []Op
	closed bool
	clock  *Clock // nil: Seq is the index in ops
	// OnOp, if set, runs (under the recorder's lock) after each recorded
	// operation with its index. Tests use it to fail an operation stream
	// at a chosen point; it must not call back into the Recorder.
	OnOp func(index int, op Op)
}

// NewRecorder returns a Recorder whose file initially holds a copy of base.
func NewRecorder(base []byte) *Recorder {
	return &Recorder{base: clone(base), cur: clone(base)}
}

func clone(b []byte) []byte { return append([]byte(nil), b...) }

func (r *Recorder) record(op Op) {
	op.Seq = int64(len(r.ops))
	if r.clock != nil {
		op.Seq = r.clock.tick()
	}
	r.ops = append(r.ops, op)
	if r.OnOp != nil {
		r.OnOp(len(r.ops)-1, op)
	}
}

// ReadAt reads the current contents; it returns io.EOF past the end.
func (r *Recorder) ReadAt(p []byte, off int64) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return 0, ErrClosed
	}
	if off < 0 {
		return 0, errors.New("crashsim: negative offset")
	}
	if off >= int64(len(r.cur)) {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	n := copy(p, r.cur[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// WriteAt writes p at off, growing the file as needed, and records it.
func (r *Recorder) WriteAt(p []byte, off int64) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return 0, ErrClosed
	}
	if off < 0 {
		return 0, errors.New("crashsim: negative offset")
	}
	if len(p) == 0 {
		return 0, nil
	}
	r.cur = applyWrite(r.cur, p, off)
	r.record(Op{Kind: OpWrite, Off: off, N: int64(len(p)), Data: clone(p)})
	return len(p), nil
}

// WriteAtDurable writes p at off like a write with RWF_DSYNC: the crash
// states treat it as durable once it returned, without making any other
// operation durable.
func (r *Recorder) WriteAtDurable(p []byte, off int64) error {
	if _, err := r.WriteAt(p, off); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if n := len(r.ops); n > 0 {
		r.ops[n-1].Durable = true
	}
	return nil
}

// Truncate sets the size of the file and records it.
func (r *Recorder) Truncate(size int64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return ErrClosed
	}
	if size < 0 {
		return errors.New("crashsim: negative size")
	}
	r.cur = applyTruncate(r.cur, size)
	r.record(Op{Kind: OpTruncate, Off: size})
	return nil
}

// PunchHole zeroes [off, off+n) without changing the size (like
// FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE) and records it.
func (r *Recorder) PunchHole(off, n int64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return ErrClosed
	}
	if off < 0 || n < 0 {
		return errors.New("crashsim: negative punch range")
	}
	if n == 0 {
		return nil
	}
	applyPunch(r.cur, off, n)
	r.record(Op{Kind: OpPunch, Off: off, N: n})
	return nil
}

// Sync records a barrier: every operation recorded before it is durable.
func (r *Recorder) Sync() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return ErrClosed
	}
	r.record(Op{Kind: OpSync})
	return nil
}

// Size returns the current file size.
func (r *Recorder) Size() (int64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return 0, ErrClosed
	}
	return int64(len(r.cur)), nil
}

// Close marks the recorder closed; it does not make anything durable.
// Operations after Close fail with ErrClosed until Reopen.
func (r *Recorder) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return ErrClosed
	}
	r.closed = true
	return nil
}

// Reopen makes a closed recorder usable again (a new handle on the same
// file: nothing recorded is lost).
func (r *Recorder) Reopen() {
	r.mu.Lock()
	r.closed = false
	r.mu.Unlock()
}

// Len returns the number of operations recorded so far. Callers use it to
// place their own operations in the stream (a guest write that returned
// when Len was n is made of operations with index < n).
func (r *Recorder) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.ops)
}

// Bytes returns a copy of the current contents.
func (r *Recorder) Bytes() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return clone(r.cur)
}

// Recording returns an immutable snapshot of what was recorded so far.
func (r *Recorder) Recording() *Recording {
	r.mu.Lock()
	defer r.mu.Unlock()
	return newRecording(r.base, append([]Op(nil), r.ops...))
}

func applyWrite(buf, p []byte, off int64) []byte {
	end := off + int64(len(p))
	if end > int64(len(buf)) {
		buf = grow(buf, end)
	}
	copy(buf[off:], p)
	return buf
}

func applyTruncate(buf []byte, size int64) []byte {
	if size <= int64(len(buf)) {
		return buf[:size]
	}
	return grow(buf, size)
}

// applyPunch zeroes the part of [off, off+n) inside the file.
func applyPunch(buf []byte, off, n int64) {
	if off >= int64(len(buf)) {
		return
	}
	clear(buf[off:min(off+n, int64(len(buf)))])
}

// grow extends buf to size with zeros (bytes beyond len are cleared: a
// slice truncated earlier may still hold old data in its capacity).
func grow(buf []byte, size int64) []byte {
	old := len(buf)
	if size <= int64(cap(buf)) {
		buf = buf[:size]
		clear(buf[old:])
		return buf
	}
	nb := make([]byte, size, max(size, int64(cap(buf))*2))
	copy(nb, buf)
	return nb
}
