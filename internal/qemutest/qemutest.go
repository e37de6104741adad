// Package qemutest is a small toolbox for tests that check the qcow2 engine
// against QEMU's own tools (Debian qemu-utils: qemu-img and qemu-io).
//
// It runs the tools with error messages that name the full command line, its
// exit status, stdout and stderr; creates images with the same options
// `qemu-img create -o ...` takes; writes data patterns, zeroes and discards
// with `qemu-io -c`; converts images to raw (also an internal snapshot's
// content) and raw to compressed qcow2; takes internal snapshots; wraps
// `qemu-img compare`, `check`, `info` and `map` (JSON output parsed into
// structs); and compares files and byte slices, reporting the first
// difference with its offset and a hex dump.
//
// Op describes one guest operation (write a pattern, write zeroes, discard)
// that can be applied both by qemu-io to an image and to a plain raw
// reference file, so a test can keep the expected guest content alongside.
//
// Callers gate their tests with testtools.Need(t, "qemu-img", "qemu-io")
// before using this package. It must not import pkg/qcow2: it is the
// independent yardstick the engine is measured with.
package qemutest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Timeout bounds every single tool invocation.
var Timeout = 2 * time.Minute

// Result is the outcome of one tool invocation.
type Result struct {
	Cmd      string // the command line, shell-quoted for copy and paste
	Stdout   []byte
	Stderr   []byte
	ExitCode int // -1 when the program did not run to an exit
}

// String describes the invocation for an error message.
func (r *Result) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\nexit status %d", r.Cmd, r.ExitCode)
	if s := strings.TrimSpace(string(r.Stdout)); s != "" {
		fmt.Fprintf(&b, "\nstdout:\n%s", clip(s, 4000))
	}
	if s := strings.TrimSpace(string(r.Stderr)); s != "" {
		fmt.Fprintf(&b, "\nstderr:\n%s", clip(s, 4000))
	}
	return b.String()
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n/2] + "\n...[clipped]...\n" + s[len(s)-n/2:]
}

// Exec runs prog with args and returns its result. The error is non-nil
// only when the program could not be started or timed out; a non-zero exit
// status is reported in Result.ExitCode.
func Exec(prog string, args ...string) (*Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, prog, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	err := cmd.Run()
	r := &Result{Cmd: quoteCmd(prog, args), Stdout: stdout.Bytes(), Stderr: stderr.Bytes(), ExitCode: -1}
	if cmd.ProcessState != nil {
		r.ExitCode = cmd.ProcessState.ExitCode()
	}
	if ctx.Err() != nil {
		return r, fmt.Errorf("timed out after %v: %s", Timeout, r)
	}
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		return r, fmt.Errorf("%s: %w", r.Cmd, err)
	}
	return r, nil
}

// Run runs prog and fails the test unless it exits 0. It returns stdout.
func Run(t testing.TB, prog string, args ...string) []byte {
	t.Helper()
	r, err := Exec(prog, args...)
	if err != nil {
		t.Fatal(err)
	}
	if r.ExitCode != 0 {
		t.Fatalf("command failed: %s", r)
	}
	return r.Stdout
}

// RunExit runs prog and returns its result whatever the exit status; it
// fails the test only if the program could not run.
func RunExit(t testing.TB, prog string, args ...string) *Result {
	t.Helper()
	r, err := Exec(prog, args...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func quoteCmd(prog string, args []string) string {
	parts := make([]string, 0, len(args)+1)
	for _, a := range append([]string{prog}, args...) {
		if a != "" && strings.IndexFunc(a, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=,:+@%", r))
		}) < 0 {
			parts = append(parts, a)
			continue
		}
		parts = append(parts, "'"+strings.ReplaceAll(a, "'", `'\''`)+"'")
	}
	return strings.Join(parts, " ")
}

// ImageOptions are the options of `qemu-img create`. Zero values leave
// QEMU's defaults in place.
type ImageOptions struct {
	Format        string // "qcow2" (default) or "raw"
	Size          int64  // 0 with a BackingFile takes the backing file's size
	ClusterSize   int64
	Compat        string // "0.10" or "1.1"
	RefcountBits  int
	LazyRefcounts bool
	Preallocation string // off, metadata, falloc, full
	ExtendedL2    bool
	BackingFile   string // stored verbatim; relative names resolve against the image's directory
	BackingFormat string // -F
	// Extra are further key=value entries for -o.
	Extra []string
}

// CreateArgs returns the qemu-img arguments that create path with o.
func (o ImageOptions) CreateArgs(path string) []string {
	format := o.Format
	if format == "" {
		format = "qcow2"
	}
	args := []string{"create", "-q", "-f", format}
	var opts []string
	if o.ClusterSize != 0 {
		opts = append(opts, "cluster_size="+strconv.FormatInt(o.ClusterSize, 10))
	}
	if o.Compat != "" {
		opts = append(opts, "compat="+o.Compat)
	}
	if o.RefcountBits != 0 {
		opts = append(opts, "refcount_bits="+strconv.Itoa(o.RefcountBits))
	}
	if o.LazyRefcounts {
		opts = append(opts, "lazy_refcounts=on")
	}
	if o.Preallocation != "" {
		opts = append(opts, "preallocation="+o.Preallocation)
	}
	if o.ExtendedL2 {
		opts = append(opts, "extended_l2=on")
	}
	opts = append(opts, o.Extra...)
	if len(opts) > 0 {
		args = append(args, "-o", strings.Join(opts, ","))
	}
	if o.BackingFile != "" {
		args = append(args, "-b", o.BackingFile)
		if o.BackingFormat != "" {
			args = append(args, "-F", o.BackingFormat)
		}
	}
	args = append(args, path)
	if o.Size != 0 || o.BackingFile == "" {
		args = append(args, strconv.FormatInt(o.Size, 10))
	}
	return args
}

// String is a short name for the options, usable as a subtest name.
func (o ImageOptions) String() string {
	var parts []string
	if o.Format != "" && o.Format != "qcow2" {
		parts = append(parts, o.Format)
	}
	if o.Compat != "" {
		parts = append(parts, "compat"+o.Compat)
	}
	if o.ClusterSize != 0 {
		parts = append(parts, "c"+SizeString(o.ClusterSize))
	}
	if o.RefcountBits != 0 {
		parts = append(parts, "rb"+strconv.Itoa(o.RefcountBits))
	}
	if o.LazyRefcounts {
		parts = append(parts, "lazy")
	}
	if o.Preallocation != "" && o.Preallocation != "off" {
		parts = append(parts, "prealloc-"+o.Preallocation)
	}
	if o.ExtendedL2 {
		parts = append(parts, "extl2")
	}
	if len(parts) == 0 {
		return "default"
	}
	return strings.Join(parts, "-")
}

// SizeString prints n as 512, 4K, 64K, 2M, ...
func SizeString(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return strconv.FormatInt(n>>30, 10) + "G"
	case n >= 1<<20 && n%(1<<20) == 0:
		return strconv.FormatInt(n>>20, 10) + "M"
	case n >= 1<<10 && n%(1<<10) == 0:
		return strconv.FormatInt(n>>10, 10) + "K"
	}
	return strconv.FormatInt(n, 10)
}

// CreateImage runs qemu-img create for path with o and fails the test on error.
func CreateImage(t testing.TB, path string, o ImageOptions) {
	t.Helper()
	Run(t, "qemu-img", o.CreateArgs(path)...)
}

// CreateRaw creates a sparse raw file of size bytes (no qemu-img needed).
func CreateRaw(t testing.TB, path string, size int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// ConvertToRaw writes the guest content of src (format "" probes) to the
// new raw file dst with qemu-img convert.
func ConvertToRaw(t testing.TB, src, srcFormat, dst string) {
	t.Helper()
	args := []string{"convert"}
	if srcFormat != "" {
		args = append(args, "-f", srcFormat)
	}
	args = append(args, "-O", "raw", src, dst)
	Run(t, "qemu-img", args...)
}

// ReadGuest returns the whole guest content of src as qemu-img convert
// sees it. It converts through a temporary file in t.TempDir().
func ReadGuest(t testing.TB, src, srcFormat string) []byte {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "guest-*.raw")
	if err != nil {
		t.Fatal(err)
	}
	dst := f.Name()
	f.Close()
	os.Remove(dst)
	ConvertToRaw(t, src, srcFormat, dst)
	b, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(dst)
	return b
}

// Compare runs `qemu-img compare` on a and b (formats "" probe). It reports
// whether the guest contents are identical (exit 0) and qemu-img's message;
// it fails the test on any exit status other than 0 or 1.
//
// Like qemu-img, it treats the shorter image as zero-extended unless strict
// is set, in which case images of different sizes differ.
func Compare(t testing.TB, a, aFormat, b, bFormat string, strict bool) (identical bool, msg string) {
	t.Helper()
	args := []string{"compare"}
	if aFormat != "" {
		args = append(args, "-f", aFormat)
	}
	if bFormat != "" {
		args = append(args, "-F", bFormat)
	}
	if strict {
		args = append(args, "-s")
	}
	args = append(args, a, b)
	r := RunExit(t, "qemu-img", args...)
	msg = strings.TrimSpace(string(r.Stdout) + string(r.Stderr))
	switch r.ExitCode {
	case 0:
		return true, msg
	case 1:
		return false, msg
	}
	t.Fatalf("qemu-img compare failed: %s", r)
	return false, ""
}

// MustCompare fails the test unless a and b have identical guest content.
func MustCompare(t testing.TB, a, aFormat, b, bFormat string) {
	t.Helper()
	if same, msg := Compare(t, a, aFormat, b, bFormat, false); !same {
		t.Fatalf("qemu-img compare %s %s: %s", a, b, msg)
	}
}

// ConvertSnapshotToRaw writes the guest content of the internal snapshot
// named snapshot of the qcow2 image src to the new raw file dst.
func ConvertSnapshotToRaw(t testing.TB, src, snapshot, dst string) {
	t.Helper()
	Run(t, "qemu-img", "convert", "-f", "qcow2", "-l", "snapshot.name="+snapshot, "-O", "raw", src, dst)
}

// CreateSnapshot takes the internal snapshot name of the qcow2 image path
// (qemu-img snapshot -c).
func CreateSnapshot(t testing.TB, path, name string) {
	t.Helper()
	Run(t, "qemu-img", "snapshot", "-c", name, path)
}

// ConvertCompressed writes the guest content of src (format "" probes) to
// the new qcow2 image dst with every cluster that compresses stored
// compressed (qemu-img convert -c); o gives the qcow2 options of dst and
// may set compression_type with Extra.
func ConvertCompressed(t testing.TB, src, srcFormat, dst string, o ImageOptions) {
	t.Helper()
	create := o.CreateArgs(dst)
	args := []string{"convert", "-c"}
	if srcFormat != "" {
		args = append(args, "-f", srcFormat)
	}
	args = append(args, "-O", "qcow2")
	for i := 0; i < len(create); i++ {
		if create[i] == "-o" {
			args = append(args, "-o", create[i+1])
		}
	}
	Run(t, "qemu-img", append(args, src, dst)...)
}
