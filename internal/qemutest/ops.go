package qemutest

import (
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
)

// OpKind is the kind of a guest operation.
type OpKind int

const (
	// OpWrite writes Len bytes of the byte Pattern (qemu-io write -P).
	OpWrite OpKind = iota
	// OpZero writes zeroes, keeping the allocation (qemu-io write -z).
	OpZero
	// OpZeroUnmap writes zeroes and allows deallocation (qemu-io write -z -u).
	OpZeroUnmap
	// OpDiscard discards (qemu-io discard). QEMU treats discard as a hint:
	// it acts on whole clusters only and leaves partial clusters as they
	// were, so the expected content after a qemu-io discard is only known
	// for cluster-aligned ranges of images whose unallocated clusters read
	// as zeros (see Op.Apply).
	OpDiscard
)

func (k OpKind) String() string {
	switch k {
	case OpWrite:
		return "write"
	case OpZero:
		return "zero"
	case OpZeroUnmap:
		return "zero-unmap"
	case OpDiscard:
		return "discard"
	}
	return fmt.Sprintf("OpKind(%d)", int(k))
}

// Op is one guest operation on [Off, Off+Len).
type Op struct {
	Kind    OpKind
	Off     int64
	Len     int64
	Pattern byte // OpWrite only
}

// Write returns an op writing n bytes of pattern at off.
func Write(off, n int64, pattern byte) Op {
	return Op{Kind: OpWrite, Off: off, Len: n, Pattern: pattern}
}

// Zero returns an op writing n zero bytes at off.
func Zero(off, n int64) Op { return Op{Kind: OpZero, Off: off, Len: n} }

// ZeroUnmap returns an op writing n zero bytes at off, allowing deallocation.
func ZeroUnmap(off, n int64) Op { return Op{Kind: OpZeroUnmap, Off: off, Len: n} }

// Discard returns an op discarding [off, off+n).
func Discard(off, n int64) Op { return Op{Kind: OpDiscard, Off: off, Len: n} }

// String describes the op, e.g. "write 0xab 4097+1000".
func (o Op) String() string {
	if o.Kind == OpWrite {
		return fmt.Sprintf("write 0x%02x %d+%d", o.Pattern, o.Off, o.Len)
	}
	return fmt.Sprintf("%s %d+%d", o.Kind, o.Off, o.Len)
}

// QemuIO returns the qemu-io command (the argument of -c) for the op.
func (o Op) QemuIO() string {
	switch o.Kind {
	case OpWrite:
		return fmt.Sprintf("write -P 0x%02x %d %d", o.Pattern, o.Off, o.Len)
	case OpZero:
		return fmt.Sprintf("write -z %d %d", o.Off, o.Len)
	case OpZeroUnmap:
		return fmt.Sprintf("write -z -u %d %d", o.Off, o.Len)
	case OpDiscard:
		return fmt.Sprintf("discard %d %d", o.Off, o.Len)
	}
	panic("qemutest: bad op kind " + o.Kind.String())
}

// Apply performs the op on a raw reference: the pattern for writes, zeros
// for zeroes and discards. For a discard the caller must know that the
// range reads as zeros afterwards (whole clusters, no backing file or a v3
// image); otherwise it should not apply the discard to the reference.
func (o Op) Apply(w io.WriterAt) error {
	if o.Len < 0 || o.Off < 0 {
		return fmt.Errorf("qemutest: bad op %s", o)
	}
	var fill byte
	if o.Kind == OpWrite {
		fill = o.Pattern
	}
	const chunk = 1 << 20
	buf := Pattern(fill, min(o.Len, chunk))
	for off, n := o.Off, o.Len; n > 0; {
		l := min(n, int64(len(buf)))
		if _, err := w.WriteAt(buf[:l], off); err != nil {
			return fmt.Errorf("apply %s: %w", o, err)
		}
		off += l
		n -= l
	}
	return nil
}

// ApplyAll applies ops to w in order (see Op.Apply) and fails the test on error.
func ApplyAll(t testing.TB, w io.WriterAt, ops ...Op) {
	t.Helper()
	for _, o := range ops {
		if err := o.Apply(w); err != nil {
			t.Fatal(err)
		}
	}
}

// ApplyToFile applies ops to the raw file at path, extending it as needed.
func ApplyToFile(t testing.TB, path string, ops ...Op) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ApplyAll(t, f, ops...)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// Pattern returns n bytes of b.
func Pattern(b byte, n int64) []byte {
	p := make([]byte, n)
	if b != 0 {
		for i := range p {
			p[i] = b
		}
	}
	return p
}

// maxCommandsPerRun bounds the number of -c arguments of one qemu-io run.
const maxCommandsPerRun = 200

// QemuIO applies ops to the image at path (format "" probes) with qemu-io,
// in batches of -c commands, and fails the test if any command fails.
func QemuIO(t testing.TB, path, format string, ops ...Op) {
	t.Helper()
	cmds := make([]string, len(ops))
	for i, o := range ops {
		cmds[i] = o.QemuIO()
	}
	QemuIOCommands(t, path, format, cmds...)
}

// QemuIOCommands runs the qemu-io commands cmds (each one the argument of a
// -c) on the image at path, in batches, and returns the combined stdout. It
// fails the test when qemu-io exits non-zero or reports a failed command
// (qemu-io goes on after a failed command).
func QemuIOCommands(t testing.TB, path, format string, cmds ...string) []byte {
	t.Helper()
	var out []byte
	for len(cmds) > 0 {
		n := min(len(cmds), maxCommandsPerRun)
		args := []string{}
		if format != "" {
			args = append(args, "-f", format)
		}
		for _, c := range cmds[:n] {
			args = append(args, "-c", c)
		}
		args = append(args, path)
		r := RunExit(t, "qemu-io", args...)
		all := string(r.Stdout) + string(r.Stderr)
		if r.ExitCode != 0 || strings.Contains(all, "failed") || strings.Contains(all, "Pattern verification") {
			t.Fatalf("qemu-io failed: %s", r)
		}
		out = append(out, r.Stdout...)
		cmds = cmds[n:]
	}
	return out
}
