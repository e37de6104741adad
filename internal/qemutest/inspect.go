package qemutest

import (
	"encoding/json"
	"fmt"
	"testing"
)

// CheckResult is `qemu-img check --output=json` plus the exit status.
type CheckResult struct {
	Filename           string `json:"filename"`
	Format             string `json:"format"`
	CheckErrors        int64  `json:"check-errors"`
	Corruptions        int64  `json:"corruptions"`
	Leaks              int64  `json:"leaks"`
	CorruptionsFixed   int64  `json:"corruptions-fixed"`
	LeaksFixed         int64  `json:"leaks-fixed"`
	ImageEndOffset     int64  `json:"image-end-offset"`
	TotalClusters      int64  `json:"total-clusters"`
	AllocatedClusters  int64  `json:"allocated-clusters"`
	FragmentedClusters int64  `json:"fragmented-clusters"`
	CompressedClusters int64  `json:"compressed-clusters"`

	// ExitCode is qemu-img check's: 0 clean, 1 check not completed,
	// 2 corruptions, 3 leaks only, 63 format cannot be checked.
	ExitCode int `json:"-"`
	// Output is the whole invocation, for error messages.
	Output string `json:"-"`
}

// Clean reports whether the check found nothing at all.
func (c *CheckResult) Clean() bool {
	return c.ExitCode == 0 && c.CheckErrors == 0 && c.Corruptions == 0 && c.Leaks == 0
}

// Check runs `qemu-img check --output=json` on path (format "" probes) with
// repair "" (none), "leaks" or "all". It fails the test only when qemu-img's
// output cannot be parsed; the verdict is in the result.
func Check(t testing.TB, path, format, repair string) *CheckResult {
	t.Helper()
	args := []string{"check", "--output=json"}
	if format != "" {
		args = append(args, "-f", format)
	}
	if repair != "" {
		args = append(args, "-r", repair)
	}
	args = append(args, path)
	r := RunExit(t, "qemu-img", args...)
	c, err := ParseCheck(r.Stdout)
	if err != nil {
		t.Fatalf("%v\n%s", err, r)
	}
	c.ExitCode = r.ExitCode
	c.Output = r.String()
	return c
}

// ParseCheck decodes qemu-img check's JSON output.
func ParseCheck(out []byte) (*CheckResult, error) {
	var c CheckResult
	if err := json.Unmarshal(out, &c); err != nil {
		return nil, fmt.Errorf("parse qemu-img check output: %w", err)
	}
	return &c, nil
}

// MustCheckClean fails the test unless qemu-img check finds path clean
// (exit 0: no errors, no corruptions, no leaks).
func MustCheckClean(t testing.TB, path, format string) *CheckResult {
	t.Helper()
	c := Check(t, path, format, "")
	if !c.Clean() {
		t.Fatalf("qemu-img check is not clean: %s", c.Output)
	}
	return c
}

// InfoResult is `qemu-img info --output=json`.
type InfoResult struct {
	Filename            string `json:"filename"`
	Format              string `json:"format"`
	VirtualSize         int64  `json:"virtual-size"`
	ActualSize          int64  `json:"actual-size"`
	ClusterSize         int64  `json:"cluster-size"`
	DirtyFlag           bool   `json:"dirty-flag"`
	BackingFilename     string `json:"backing-filename"`
	FullBackingFilename string `json:"full-backing-filename"`
	BackingFilenameFmt  string `json:"backing-filename-format"`
	FormatSpecific      struct {
		Type string `json:"type"`
		Data struct {
			Compat          string `json:"compat"`
			CompressionType string `json:"compression-type"`
			LazyRefcounts   bool   `json:"lazy-refcounts"`
			RefcountBits    int    `json:"refcount-bits"`
			Corrupt         bool   `json:"corrupt"`
			ExtendedL2      bool   `json:"extended-l2"`
			DataFile        string `json:"data-file"`
		} `json:"data"`
	} `json:"format-specific"`
	Snapshots []struct {
		ID          string `json:"id"`
		Name        string `json:"name"`
		VMStateSize int64  `json:"vm-state-size"`
	} `json:"snapshots"`
}

// Info runs `qemu-img info --output=json` on path (format "" probes).
func Info(t testing.TB, path, format string) *InfoResult {
	t.Helper()
	args := []string{"info", "--output=json"}
	if format != "" {
		args = append(args, "-f", format)
	}
	args = append(args, path)
	out := Run(t, "qemu-img", args...)
	var info InfoResult
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatalf("parse qemu-img info output: %v\n%s", err, out)
	}
	return &info
}

// MapEntry is one entry of `qemu-img map --output=json`.
type MapEntry struct {
	Start   int64  `json:"start"`
	Length  int64  `json:"length"`
	Depth   int    `json:"depth"`
	Present bool   `json:"present"`
	Zero    bool   `json:"zero"`
	Data    bool   `json:"data"`
	Offset  *int64 `json:"offset,omitempty"`
}

// Map runs `qemu-img map --output=json` on path (format "" probes).
func Map(t testing.TB, path, format string) []MapEntry {
	t.Helper()
	args := []string{"map", "--output=json"}
	if format != "" {
		args = append(args, "-f", format)
	}
	args = append(args, path)
	out := Run(t, "qemu-img", args...)
	var m []MapEntry
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("parse qemu-img map output: %v\n%s", err, out)
	}
	return m
}
