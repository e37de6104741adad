package crashsim

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
)

// Clock puts the operations of several Recorders into one order, for an
// engine that writes more than one file (a commit writes the backing file,
// then empties the top). Each file's Sync is a barrier for that file
// only, as fdatasync is: a crash keeps, of every file, the operations
// before its last completed Sync plus any subset of the later ones issued
// before the crash.
type Clock struct{ n atomic.Int64 }

func (c *Clock) tick() int64 { return c.n.Add(1) - 1 }

// Now returns the Seq the next recorded operation will get.
func (c *Clock) Now() int64 { return c.n.Load() }

// NewRecorderOn returns a Recorder like NewRecorder whose operations take
// their Seq from c.
func NewRecorderOn(c *Clock, base []byte) *Recorder {
	r := NewRecorder(base)
	r.clock = c
	return r
}

// GroupState is one crash state of a group of files recorded on one Clock.
type GroupState struct {
	Index int
	Kind  Kind
	// Crash: operations with Seq >= Crash had not been issued.
	Crash int64
	// Files[i] is the state of the i-th recording.
	Files []State
}

func (s GroupState) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "group state %d (%s, ops with seq < %d issued):", s.Index, s.Kind, s.Crash)
	for i, f := range s.Files {
		fmt.Fprintf(&b, " file %d [durable <%d, issued <%d, seed %#x]", i, f.Durable, f.Crash, f.Seed)
	}
	return b.String()
}

// issuedBefore returns how many of rec's operations have Seq < c.
func (rec *Recording) issuedBefore(c int64) int {
	return sort.Search(len(rec.ops), func(i int) bool { return rec.ops[i].Seq >= c })
}

// syncedBefore returns the index after the last Sync among ops[:n].
func (rec *Recording) syncedBefore(n int) int {
	if k := rec.epochAt(n); k > 0 {
		return rec.syncs[k-1] + 1
	}
	return 0
}

// GroupStates lists crash states of recordings made on one Clock, ordered
// by crash point. A crash point c splits every file's stream: the
// operations issued before c, of which those before the file's last Sync
// persisted. Plan means what it does for States: Boundary states (nothing
// unsynced persisted, at every Sync of any file), ReorderedPerEpoch
// Reordered states per Sync-delimited stretch of the merged stream
// (each file's unsynced operations persist in part, independently, torn
// and reordered), and Prefixes kill states (everything issued persisted).
func GroupStates(recs []*Recording, p Plan) []GroupState {
	var seqs, syncSeqs []int64
	for _, rec := range recs {
		for _, op := range rec.ops {
			seqs = append(seqs, op.Seq)
			if op.Kind == OpSync {
				syncSeqs = append(syncSeqs, op.Seq)
			}
		}
	}
	if len(seqs) == 0 {
		return nil
	}
	slices.Sort(seqs)
	slices.Sort(syncSeqs)
	first, end := seqs[0], seqs[len(seqs)-1]+1
	rng := rand.New(rand.NewPCG(p.Seed, 0x7f4a7c159e3779b9))
	at := func(kind Kind, c int64) GroupState {
		s := GroupState{Kind: kind, Crash: c}
		for _, rec := range recs {
			crash := rec.issuedBefore(c)
			f := State{Kind: kind, Crash: crash, Durable: crash}
			if kind != Prefix {
				f.Durable = rec.syncedBefore(crash)
			}
			if kind == Boundary {
				f.Crash = f.Durable
			}
			if kind == Reordered {
				f.Seed = rng.Uint64()
				if f.Durable == f.Crash {
					f.Kind = Boundary
				}
			}
			f.Epoch = rec.epochAt(f.Durable)
			s.Files = append(s.Files, f)
		}
		return s
	}
	var out []GroupState
	bounds := append([]int64{first}, syncSeqs...)
	for i, b := range bounds {
		lo := b
		if i > 0 {
			lo = b + 1 // just after the sync
		}
		if !p.NoBoundaries {
			out = append(out, at(Boundary, lo))
		}
		hi := end
		if i+1 < len(bounds) {
			hi = bounds[i+1] + 1 // the next sync itself may be issued, not completed
		}
		n := int(hi - lo)
		if n <= 0 || p.ReorderedPerEpoch <= 0 {
			continue
		}
		for range min(p.ReorderedPerEpoch, 2*n+1) {
			out = append(out, at(Reordered, lo+1+rng.Int64N(int64(n))))
		}
	}
	for i := 1; i <= p.Prefixes; i++ {
		k := len(seqs) * i / p.Prefixes
		c := end
		if k < len(seqs) {
			c = seqs[k]
		}
		out = append(out, at(Prefix, c))
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Crash < out[j].Crash })
	out = slices.CompactFunc(out, func(a, b GroupState) bool { return a.Kind != Reordered && b.Kind == a.Kind && a.Crash == b.Crash })
	for i := range out {
		out[i].Index = i
	}
	return out
}
