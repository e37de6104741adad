package qcow2

import (
	"cmp"
	"slices"
	"sort"
)

// clusterSpan is the clusters [start, end).
type clusterSpan struct{ start, end int64 }

// clusterSpans is a set of clusters kept as sorted, disjoint runs: what
// the overlap map holds for tables that may be long and many (the
// snapshot table and snapshot L1 tables: 65536 snapshots of a 32 MiB L1
// table each would be 2^32 clusters one by one). Memory is one run per
// table, and a lookup a binary search.
type clusterSpans []clusterSpan

// newClusterSpans returns the union of runs (which it sorts in place).
func newClusterSpans(runs []clusterSpan) clusterSpans {
	slices.SortFunc(runs, func(a, b clusterSpan) int { return cmp.Compare(a.start, b.start) })
	var out clusterSpans
	for _, r := range runs {
		if r.end <= r.start {
			continue
		}
		if n := len(out); n > 0 && r.start <= out[n-1].end {
			out[n-1].end = max(out[n-1].end, r.end)
			continue
		}
		out = append(out, r)
	}
	return slices.Clip(out)
}

// find returns the index of the run holding c, or -1.
func (s clusterSpans) find(c int64) int {
	i := sort.Search(len(s), func(i int) bool { return s[i].end > c })
	if i < len(s) && s[i].start <= c {
		return i
	}
	return -1
}

func (s clusterSpans) contains(c int64) bool { return len(s) > 0 && s.find(c) >= 0 }

// remove takes cluster c out of the set, splitting its run.
func (s *clusterSpans) remove(c int64) {
	i := s.find(c)
	if i < 0 {
		return
	}
	r := (*s)[i]
	switch {
	case r.start == c && r.end == c+1:
		*s = slices.Delete(*s, i, i+1)
	case r.start == c:
		(*s)[i].start++
	case r.end == c+1:
		(*s)[i].end--
	default:
		(*s)[i].end = c
		*s = slices.Insert(*s, i+1, clusterSpan{c + 1, r.end})
	}
}

// clusters returns how many clusters the set holds.
func (s clusterSpans) clusters() int64 {
	var n int64
	for _, r := range s {
		n += r.end - r.start
	}
	return n
}
