package crashsim

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
)

// Recording is an immutable operation stream over a base file.
type Recording struct {
	base  []byte
	ops   []Op
	syncs []int // indices of the OpSync operations

	mu    sync.Mutex
	cache []snapshot // a few replayed prefixes, to avoid replaying from 0
}

type snapshot struct {
	n    int // ops[:n] applied
	data []byte
}

const maxCached = 4

func newRecording(base []byte, ops []Op) *Recording {
	rec := &Recording{base: base, ops: ops}
	for i, op := range ops {
		if op.Kind == OpSync {
			rec.syncs = append(rec.syncs, i)
		}
	}
	return rec
}

// NewRecording builds a Recording from a base and an operation list (for
// tests of the generator itself).
func NewRecording(base []byte, ops []Op) *Recording {
	return newRecording(clone(base), append([]Op(nil), ops...))
}

// Ops returns the recorded operations (do not modify them).
func (rec *Recording) Ops() []Op { return rec.ops }

// Base returns the contents before the first operation (do not modify).
func (rec *Recording) Base() []byte { return rec.base }

// Syncs returns the indices of the Sync operations.
func (rec *Recording) Syncs() []int { return rec.syncs }

// Since returns the recording of ops[from:] over the state ops[:from]
// produced, as if the whole prefix had been made durable. Tests use it to
// start crashing only after an image was created.
func (rec *Recording) Since(from int) *Recording {
	return newRecording(rec.Replay(from), append([]Op(nil), rec.ops[from:]...))
}

// Replay returns the file after ops[:n] were applied in order. The caller
// owns the returned slice.
func (rec *Recording) Replay(n int) []byte {
	rec.mu.Lock()
	start, buf := 0, rec.base
	for _, s := range rec.cache {
		if s.n <= n && s.n >= start {
			start, buf = s.n, s.data
		}
	}
	rec.mu.Unlock()
	out := clone(buf)
	if start == n {
		return out
	}
	for _, op := range rec.ops[start:n] {
		out = applyOp(out, op)
	}
	rec.mu.Lock()
	if len(rec.cache) >= maxCached {
		rec.cache = rec.cache[1:]
	}
	rec.cache = append(rec.cache, snapshot{n: n, data: clone(out)})
	rec.mu.Unlock()
	return out
}

func applyOp(buf []byte, op Op) []byte {
	switch op.Kind {
	case OpWrite:
		return applyWrite(buf, op.Data, op.Off)
	case OpTruncate:
		return applyTruncate(buf, op.Off)
	case OpPunch:
		applyPunch(buf, op.Off, op.N)
	}
	return buf
}

// Kind says how a crash state came about.
type Kind uint8

const (
	// Boundary: power failure right after a Sync completed (or before any
	// operation): exactly the operations before it persisted.
	Boundary Kind = iota + 1
	// Reordered: power failure inside a flush epoch: the operations
	// before the epoch persisted, and an arbitrary subset of the epoch's
	// issued operations, in arbitrary order, some of them torn.
	Reordered
	// Prefix: the process was killed; every issued operation persisted,
	// in order (the host kernel survived).
	Prefix
)

func (k Kind) String() string {
	switch k {
	case Boundary:
		return "boundary"
	case Reordered:
		return "reordered"
	case Prefix:
		return "prefix"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// State identifies one crash state of a Recording.
type State struct {
	Index int
	Kind  Kind
	// Epoch is the number of Syncs that completed before the crash.
	Epoch int
	// Durable: ops[:Durable] persisted (all of them, in order).
	Durable int
	// Crash: ops[Crash:] had not been issued. Operations in
	// [Durable, Crash) may or may not have persisted (Reordered only;
	// Boundary and Prefix states have Durable == Crash).
	Crash int
	// Seed drives the choices of a Reordered state.
	Seed uint64
}

func (s State) String() string {
	return fmt.Sprintf("state %d (%s, epoch %d, ops durable <%d, issued <%d, seed %#x)",
		s.Index, s.Kind, s.Epoch, s.Durable, s.Crash, s.Seed)
}

// Plan says which crash states to generate.
type Plan struct {
	Seed uint64
	// ReorderedPerEpoch bounds the Reordered states drawn per epoch; an
	// epoch with few operations gets fewer (twice its operation count
	// plus one, at most).
	ReorderedPerEpoch int
	// Prefixes is the number of Prefix states, spread evenly over the
	// stream (the complete stream is always one of them).
	Prefixes int
	// NoBoundaries leaves out the Boundary states.
	NoBoundaries bool
}

// States lists the crash states the plan asks for, ordered by Durable
// (so that Materialize can reuse replayed prefixes), then by kind.
// The list depends only on the recording and the plan.
func (rec *Recording) States(p Plan) []State {
	var out []State
	rng := rand.New(rand.NewPCG(p.Seed, 0x9e3779b97f4a7c15))
	// Epoch e spans ops[start:end): start is after the e-th sync (0 for
	// e = 0) and end is the index of the next sync (or len(ops)).
	nEpochs := len(rec.syncs) + 1
	for e := 0; e < nEpochs; e++ {
		start := 0
		if e > 0 {
			start = rec.syncs[e-1] + 1
		}
		end := len(rec.ops)
		if e < len(rec.syncs) {
			end = rec.syncs[e]
		}
		if !p.NoBoundaries {
			out = append(out, State{Kind: Boundary, Epoch: e, Durable: start, Crash: start})
		}
		n := end - start
		if n == 0 || p.ReorderedPerEpoch <= 0 {
			continue
		}
		count := min(p.ReorderedPerEpoch, 2*n+1)
		for range count {
			crash := end
			if rng.IntN(2) == 0 {
				crash = start + 1 + rng.IntN(n)
			}
			out = append(out, State{Kind: Reordered, Epoch: e, Durable: start, Crash: crash, Seed: rng.Uint64()})
		}
	}
	if p.Prefixes > 0 {
		seen := map[int]bool{}
		for i := 1; i <= p.Prefixes; i++ {
			c := len(rec.ops) * i / p.Prefixes
			if seen[c] {
				continue
			}
			seen[c] = true
			out = append(out, State{Kind: Prefix, Epoch: rec.epochAt(c), Durable: c, Crash: c})
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Durable != out[j].Durable {
			return out[i].Durable < out[j].Durable
		}
		return out[i].Kind < out[j].Kind
	})
	for i := range out {
		out[i].Index = i
	}
	return out
}

// epochAt returns the number of syncs in ops[:n].
func (rec *Recording) epochAt(n int) int {
	return sort.SearchInts(rec.syncs, n)
}

// Piece is a part of an operation that persisted in a crash state.
type Piece struct {
	Op     int   // index in Ops()
	Off, N int64 // the persisted range (for a truncate: Off is the size)
	Torn   bool  // only part of the operation persisted
}

// Materialize builds the contents of the file in crash state s.
func (rec *Recording) Materialize(s State) []byte {
	data, _, _ := rec.materialize(s)
	return data
}

// Explain returns what persisted from [Durable, Crash), in the order it
// was applied, for a failure message.
func (rec *Recording) Explain(s State) string {
	data, pieces, sizeAt := rec.materialize(s)
	var b strings.Builder
	fmt.Fprintf(&b, "%v\n", s)
	if s.Kind != Reordered {
		fmt.Fprintf(&b, "  ops [0,%d) applied in order\n", s.Durable)
		return b.String()
	}
	fmt.Fprintf(&b, "  ops [0,%d) applied in order; file size %d as of op %d; from the epoch's issued ops [%d,%d):\n", s.Durable, len(data), sizeAt, s.Durable, s.Crash)
	applied := map[int]bool{}
	for _, pc := range pieces {
		applied[pc.Op] = true
		torn := ""
		if pc.Torn {
			torn = " (torn: this sector only)"
		}
		fmt.Fprintf(&b, "    applied op %d %v: [%d,+%d)%s\n", pc.Op, rec.ops[pc.Op], pc.Off, pc.N, torn)
	}
	for i := s.Durable; i < s.Crash; i++ {
		if !applied[i] {
			fmt.Fprintf(&b, "    lost    op %d %v\n", i, rec.ops[i])
		}
	}
	return b.String()
}

// OpsString lists ops[from:to] one a line, for failure messages.
func (rec *Recording) OpsString(from, to int) string {
	var b strings.Builder
	for i := max(from, 0); i < min(to, len(rec.ops)); i++ {
		fmt.Fprintf(&b, "  %4d %v\n", i, rec.ops[i])
	}
	return b.String()
}

// materialize also returns the pieces it applied and the size point: the
// file has the size it had after ops[:sizeAt].
func (rec *Recording) materialize(s State) (data []byte, pieces []Piece, sizeAt int) {
	buf := rec.Replay(s.Durable)
	if s.Kind != Reordered {
		return buf, nil, s.Durable
	}
	rng := rand.New(rand.NewPCG(s.Seed, uint64(s.Durable)<<32|uint64(s.Crash)))
	// How eagerly operations persist varies from state to state, so that
	// both nearly-empty and nearly-complete epochs show up.
	keep := [...]float64{0.1, 0.5, 0.5, 0.9, 0.97}[rng.IntN(5)]
	tear := [...]float64{0, 0.2, 0.5}[rng.IntN(3)]
	for i := s.Durable; i < s.Crash; i++ {
		op := rec.ops[i]
		if op.Kind == OpSync {
			continue // cannot happen: Crash <= the epoch's end
		}
		if op.Durable {
			pieces = append(pieces, Piece{Op: i, Off: op.Off, N: op.N})
			continue
		}
		if rng.Float64() >= keep {
			continue
		}
		if op.Kind == OpTruncate {
			continue // the file size is chosen below, as one point in time
		}
		first, last := op.Off/SectorSize, (op.Off+op.N-1)/SectorSize
		if first == last || rng.Float64() >= tear {
			pieces = append(pieces, Piece{Op: i, Off: op.Off, N: op.N})
			continue
		}
		for sec := first; sec <= last; sec++ {
			if rng.IntN(2) == 0 {
				continue
			}
			lo := max(op.Off, sec*SectorSize)
			hi := min(op.Off+op.N, (sec+1)*SectorSize)
			pieces = append(pieces, Piece{Op: i, Off: lo, N: hi - lo, Torn: true})
		}
	}
	rng.Shuffle(len(pieces), func(i, j int) { pieces[i], pieces[j] = pieces[j], pieces[i] })
	pieces = dropSuperseded(rec.ops, pieces)
	sizeAt = rec.sizePoint(rng, s.Durable, s.Crash)
	size := rec.sizeAfter(int64(len(buf)), s.Durable, sizeAt)
	if cut := rec.cutBetween(s.Durable-1, sizeAt); cut < int64(len(buf)) {
		buf = applyTruncate(buf, cut) // a persisted shrink drops old bytes too
	}
	for _, pc := range pieces {
		op := rec.ops[pc.Op]
		switch op.Kind {
		case OpWrite:
			// Bytes a persisted shrink cut off are gone even if their
			// blocks were written first.
			end := min(pc.Off+pc.N, rec.cutBetween(pc.Op, sizeAt))
			if end > pc.Off {
				buf = applyWrite(buf, op.Data[pc.Off-op.Off:end-op.Off], pc.Off)
			}
		case OpPunch:
			applyPunch(buf, pc.Off, pc.N)
		}
	}
	if size != int64(len(buf)) {
		buf = applyTruncate(buf, size)
	}
	return buf, pieces, sizeAt
}

// sizePoint picks the point in time whose file size a crash state keeps:
// the size is inode metadata, which a journaling file system persists as
// of one moment, never as a mix of reordered size changes. A durable write
// commits the inode as it was when the write was issued, so the point lies
// after the last durable operation of [from, to). It returns n such that
// the size effects of ops[from:n] persisted.
func (rec *Recording) sizePoint(rng *rand.Rand, from, to int) int {
	lo := from
	for i := from; i < to; i++ {
		if rec.ops[i].Durable {
			lo = i + 1
		}
	}
	return lo + rng.IntN(to-lo+1)
}

// sizeAfter replays only the size effects of ops[from:to] on a file of the
// given size: truncates set it, writes past the end extend it.
func (rec *Recording) sizeAfter(size int64, from, to int) int64 {
	for _, op := range rec.ops[from:to] {
		switch op.Kind {
		case OpTruncate:
			size = op.Off
		case OpWrite:
			size = max(size, op.Off+int64(len(op.Data)))
		}
	}
	return size
}

// cutBetween returns the smallest size a truncate issued after op j and
// before n set (MaxInt64 if none): what op j wrote beyond it was dropped.
func (rec *Recording) cutBetween(j, n int) int64 {
	cut := int64(math.MaxInt64)
	for i := j + 1; i < n; i++ {
		if rec.ops[i].Kind == OpTruncate {
			cut = min(cut, rec.ops[i].Off)
		}
	}
	return cut
}

// dropSuperseded removes pieces that the shuffle put after a durable write
// they overlap but precede in issue order: the durable write's bytes came
// from the page cache, which already held everything issued before it, so
// an older write can never land on top of it.
func dropSuperseded(ops []Op, pieces []Piece) []Piece {
	out := pieces[:0]
	var durable []Piece // durable pieces seen so far in apply order
	for _, pc := range pieces {
		superseded := false
		for _, d := range durable {
			if pc.Op < d.Op && ops[pc.Op].Kind != OpTruncate && pc.Off < d.Off+d.N && d.Off < pc.Off+pc.N {
				superseded = true
				break
			}
		}
		if superseded {
			continue
		}
		if ops[pc.Op].Durable {
			durable = append(durable, pc)
		}
		out = append(out, pc)
	}
	return out
}
