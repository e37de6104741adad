package qcow2

import (
	"fmt"
	"strings"
)

// RepairMode selects what Check may change, like qemu-img check -r.
type RepairMode int

const (
	// RepairNone only reports (the image is opened read-only).
	RepairNone RepairMode = iota
	// RepairLeaks lowers refcounts that are too high (-r leaks).
	RepairLeaks
	// RepairAll also fixes corruptions (-r all): raises refcounts that are
	// too low, fixes OFLAG_COPIED, rebuilds broken refcount structures and
	// clears the corrupt bit when nothing is left to fix.
	RepairAll
)

func (m RepairMode) String() string {
	switch m {
	case RepairNone:
		return "none"
	case RepairLeaks:
		return "leaks"
	case RepairAll:
		return "all"
	}
	return fmt.Sprintf("RepairMode(%d)", int(m))
}

// CheckOptions control Check.
type CheckOptions struct {
	Repair RepairMode
	// ForceShare checks an image another program has open for writing
	// (qemu-img check -U); see Options.ForceShare. Not with a repair.
	ForceShare bool
	// Progress, if set, is called as the check goes (progress.go).
	Progress func(Progress)
}

// maxCheckMessages bounds CheckResult.Messages; a damaged image can yield
// one line per cluster.
const maxCheckMessages = 100000

// CheckResult is what `qemu-img check` reports. The JSON tags give the field
// names of `qemu-img check --output=json`; like qemu, zero counters other
// than check-errors are omitted there.
//
// When a repair was requested and something was fixed, the counters are
// those of a second, read-only check of the repaired image (as qemu-img
// does), while CorruptionsFixed and LeaksFixed count what the repair did.
type CheckResult struct {
	Filename string `json:"filename"`
	Format   string `json:"format"`

	CheckErrors      int `json:"check-errors"`
	Corruptions      int `json:"corruptions,omitempty"`
	Leaks            int `json:"leaks,omitempty"`
	CorruptionsFixed int `json:"corruptions-fixed,omitempty"`
	LeaksFixed       int `json:"leaks-fixed,omitempty"`

	ImageEndOffset     int64 `json:"image-end-offset,omitempty"`
	TotalClusters      int64 `json:"total-clusters,omitempty"`
	AllocatedClusters  int64 `json:"allocated-clusters,omitempty"`
	FragmentedClusters int64 `json:"fragmented-clusters,omitempty"`
	CompressedClusters int64 `json:"compressed-clusters,omitempty"`

	// Messages are the diagnostic lines qemu-img check prints on stderr
	// ("ERROR cluster 5 refcount=0 reference=1", "Leaked cluster 9
	// refcount=1 reference=0", "Repairing ...", ...), in order. At most
	// maxCheckMessages are kept; MessagesDropped counts the rest.
	Messages        []string `json:"-"`
	MessagesDropped int      `json:"-"`

	// failed: the check was abandoned (qemu-img says "Check failed").
	failed bool
}

// ExitCode is the exit status qemu-img check would give: 1 if the check
// itself failed (CheckErrors > 0), 2 if corruptions remain, 3 if only leaks
// remain, 0 if the image is clean.
func (r *CheckResult) ExitCode() int {
	switch {
	case r.CheckErrors > 0:
		return 1
	case r.Corruptions > 0:
		return 2
	case r.Leaks > 0:
		return 3
	}
	return 0
}

// Clean reports whether the image has no errors, corruptions or leaks.
func (r *CheckResult) Clean() bool { return r.ExitCode() == 0 }

// Summary returns the human-readable report qemu-img check prints on
// stdout (without the repair preamble).
func (r *CheckResult) Summary() string {
	var b strings.Builder
	if r.Corruptions == 0 && r.Leaks == 0 && r.CheckErrors == 0 {
		b.WriteString("No errors were found on the image.\n")
	} else {
		if r.Corruptions > 0 {
			fmt.Fprintf(&b, "\n%d errors were found on the image.\n"+
				"Data may be corrupted, or further writes to the image may corrupt it.\n", r.Corruptions)
		}
		if r.Leaks > 0 {
			fmt.Fprintf(&b, "\n%d leaked clusters were found on the image.\n"+
				"This means waste of disk space, but no harm to data.\n", r.Leaks)
		}
		if r.CheckErrors > 0 {
			fmt.Fprintf(&b, "\n%d internal errors have occurred during the check.\n", r.CheckErrors)
		}
	}
	if r.TotalClusters != 0 && r.AllocatedClusters != 0 {
		fmt.Fprintf(&b, "%d/%d = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% compressed clusters\n",
			r.AllocatedClusters, r.TotalClusters,
			float64(r.AllocatedClusters)*100/float64(r.TotalClusters),
			float64(r.FragmentedClusters)*100/float64(r.AllocatedClusters),
			float64(r.CompressedClusters)*100/float64(r.AllocatedClusters))
	}
	if r.ImageEndOffset != 0 {
		fmt.Fprintf(&b, "Image end offset: %d\n", r.ImageEndOffset)
	}
	return b.String()
}

// RepairPreamble is what qemu-img check prints before the second check
// when a repair fixed something; empty otherwise.
func (r *CheckResult) RepairPreamble() string {
	if r.CorruptionsFixed == 0 && r.LeaksFixed == 0 {
		return ""
	}
	return fmt.Sprintf("The following inconsistencies were found and repaired:\n\n"+
		"    %d leaked clusters\n    %d corruptions\n\nDouble checking the fixed image now...\n",
		r.LeaksFixed, r.CorruptionsFixed)
}

func (r *CheckResult) logf(format string, args ...any) {
	if len(r.Messages) >= maxCheckMessages {
		r.MessagesDropped++
		return
	}
	r.Messages = append(r.Messages, fmt.Sprintf(format, args...))
}
