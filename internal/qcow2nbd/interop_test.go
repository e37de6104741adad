package qcow2nbd

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
	"github.com/csi-qcow2/csi-qcow2/pkg/nbdattach"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

const interopSize = 16 << 20

// run runs a program and fails the test unless it exits 0.
func run(t *testing.T, prog string, args ...string) string {
	t.Helper()
	out, err := exec.Command(prog, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", prog, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// served is an image served by an in-process server on a unix socket.
type served struct {
	uri     string
	server  *nbdattach.Server
	backend nbdattach.Backend
	stop    func()
}

func serveBackend(t *testing.T, b nbdattach.Backend, closeFn func() error) *served {
	t.Helper()
	// qemu-io, nbdcopy and fio may be slow to finish the handshake on a
	// loaded host: the default 10 s would cut them off.
	s := nbdattach.NewServer(nbdattach.Options{Logf: t.Logf, HandshakeTimeout: testtools.Patience})
	if err := s.AddExport(&nbdattach.Export{Backend: b}); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(l)
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			s.Close()
			if err := closeFn(); err != nil {
				t.Errorf("closing the image: %v", err)
			}
		}
	}
	t.Cleanup(stop)
	return &served{uri: "nbd+unix:///?socket=" + sock, server: s, backend: b, stop: stop}
}

// interopImage is one kind of served image: it creates the image with
// some data, returns its path and opens it as a backend.
type interopImage struct {
	name   string
	create func(t *testing.T, dir string) string
	open   func(t *testing.T, path string) (nbdattach.Backend, func() error)
}

var interopImages = []interopImage{
	{
		name: "raw",
		create: func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "disk.raw")
			run(t, "qemu-img", "create", "-f", "raw", p, strconv.Itoa(interopSize))
			run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x11 0 1M", "-c", "write -P 0x22 5M 64k", p)
			return p
		},
		open: func(t *testing.T, p string) (nbdattach.Backend, func() error) {
			b, err := nbdattach.OpenFileBackend(p, false)
			if err != nil {
				t.Fatal(err)
			}
			return b, b.Close
		},
	},
	{
		// An overlay on a qemu-made base: reads fall through to the base.
		name:   "qcow2-overlay",
		create: createInteropOverlay,
		open:   openInteropQcow2(false),
	},
	{
		// The same with the write journal, as img serve opens it.
		name:   "qcow2-overlay-journal",
		create: createInteropOverlay,
		open:   openInteropQcow2(true),
	},
}

func createInteropOverlay(t *testing.T, dir string) string {
	base := filepath.Join(dir, "base.qcow2")
	p := filepath.Join(dir, "disk.qcow2")
	run(t, "qemu-img", "create", "-f", "qcow2", base, strconv.Itoa(interopSize))
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 1M", "-c", "write -P 0x22 5M 64k", "-c", "write -z 8M 1M", base)
	run(t, "qemu-img", "create", "-f", "qcow2", "-F", "qcow2", "-b", base, p)
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x33 512k 4k", p)
	return p
}

func openInteropQcow2(journal bool) func(t *testing.T, p string) (nbdattach.Backend, func() error) {
	return func(t *testing.T, p string) (nbdattach.Backend, func() error) {
		img, err := qcow2.Open(p, qcow2.Options{Backing: qcow2.BackingPolicy{AllowAnyPath: true}, Journal: journal})
		if err != nil {
			t.Fatal(err)
		}
		return New(img, false), img.Close
	}
}

// qemuOps are applied through NBD and, for reference, to a raw copy.
var qemuOps = []string{
	"write -P 0xa5 2M 1M",
	"write -P 0x5a 3M 4k",
	"write -P 0x77 3149824 12k", // unaligned to clusters
	"write -z 5M 64k",
	"write -z -u 2M 64k", // zero with unmap
	"discard 10M 1M",
	"write -P 0x0f 16776704 512",
	"flush",
}

func qemuIOArgs(ops []string, format, target string) []string {
	args := []string{"-f", format}
	for _, op := range ops {
		args = append(args, "-c", op)
	}
	return append(args, target)
}

// TestInterop serves raw and qcow2 images and drives them with qemu-io,
// qemu-img, nbdcopy, nbdinfo and fio; every read must match byte for byte,
// the map must match the engine's allocation, and the image must check
// clean and read the same without the server.
func TestInterop(t *testing.T) {
	testtools.Need(t, "qemu-img", "qemu-io", "nbdinfo", "nbdcopy", "fio")
	for _, kind := range interopImages {
		t.Run(kind.name, func(t *testing.T) {
			dir := t.TempDir()
			path := kind.create(t, dir)
			ref := filepath.Join(dir, "ref.raw")
			run(t, "qemu-img", "convert", "-O", "raw", path, ref)
			b, closeFn := kind.open(t, path)
			srv := serveBackend(t, b, closeFn)

			// qemu-io writes through our server; the same ops on a raw
			// copy are the reference, compared by qemu-img over NBD.
			run(t, "qemu-io", qemuIOArgs(qemuOps, "raw", srv.uri)...)
			run(t, "qemu-io", qemuIOArgs(qemuOps, "raw", ref)...)
			run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", srv.uri, ref)
			run(t, "qemu-io", "-f", "raw", "-c", "read -P 0xa5 2162688 960k", "-c", "read -P 0 5M 64k", srv.uri)

			// nbdcopy reads the export; the copy is the reference.
			got := filepath.Join(dir, "got.raw")
			run(t, "nbdcopy", srv.uri, got)
			sameFiles(t, got, ref)

			checkMap(t, srv)

			// nbdcopy writes random data; qemu-img convert reads it back.
			rnd := filepath.Join(dir, "rnd.raw")
			writeRandom(t, rnd, interopSize)
			run(t, "nbdcopy", rnd, srv.uri)
			back := filepath.Join(dir, "back.raw")
			run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", srv.uri, back)
			sameFiles(t, back, rnd)

			// qemu-img convert writes through the server (-n: into the
			// existing export).
			run(t, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", ref, srv.uri)
			run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", srv.uri, ref)

			// fio's nbd engine: random writes of mixed sizes at depth 16,
			// each block read back and verified by checksum.
			run(t, "fio", "--name=verify", "--ioengine=nbd", "--uri="+srv.uri, "--rw=randwrite",
				"--bssplit=4k/50:64k/40:1m/10", "--iodepth=16", "--size=8M", "--offset=4M",
				"--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--randrepeat=0",
				"--verify_state_save=0") // no state file in the package directory

			// What the server serves is what the file holds.
			final := filepath.Join(dir, "final.raw")
			run(t, "nbdcopy", srv.uri, final)
			srv.stop()
			run(t, "qemu-img", "compare", path, final)
			if kind.name != "raw" {
				run(t, "qemu-img", "check", path)
			}
		})
	}
}

// checkMap compares nbdinfo --map (base:allocation over NBD) with the
// backend's own block status, merged the same way.
func checkMap(t *testing.T, srv *served) {
	t.Helper()
	out := run(t, "nbdinfo", "--map", srv.uri)
	var got []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			t.Fatalf("nbdinfo line %q", line)
		}
		got = appendRun(got, f[0], f[1], f[2])
	}
	exts, err := srv.backend.BlockStatus(0, srv.backend.Size())
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	var off int64
	for _, e := range exts {
		st := 0
		if e.Hole {
			st |= 1
		}
		if e.Zero {
			st |= 2
		}
		want = appendRun(want, strconv.FormatInt(off, 10), strconv.FormatInt(e.Length, 10), strconv.Itoa(st))
		off += e.Length
	}
	if strings.Join(got, ";") != strings.Join(want, ";") {
		t.Errorf("nbdinfo --map:\n%s\nbackend: %v", out, want)
	}
	if len(want) < 3 {
		t.Errorf("map has only %d runs: the image should mix data and holes", len(want))
	}
}

// appendRun appends "offset+length:type", merging with the previous run of
// the same type.
func appendRun(runs []string, off, length, typ string) []string {
	o, _ := strconv.ParseInt(off, 10, 64)
	l, _ := strconv.ParseInt(length, 10, 64)
	if n := len(runs); n > 0 {
		var po, pl int64
		var pt string
		fmt.Sscanf(strings.ReplaceAll(runs[n-1], ":", " "), "%d+%d %s", &po, &pl, &pt)
		if pt == typ && po+pl == o {
			runs[n-1] = fmt.Sprintf("%d+%d:%s", po, pl+l, typ)
			return runs
		}
	}
	return append(runs, fmt.Sprintf("%d+%d:%s", o, l, typ))
}

func writeRandom(t *testing.T, path string, n int) {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	// Keep some zero runs so that sparse paths are exercised too.
	clear(b[n/4 : n/4+(1<<20)])
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func sameFiles(t *testing.T, a, b string) {
	t.Helper()
	x, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(x, y) {
		i := 0
		for i < len(x) && i < len(y) && x[i] == y[i] {
			i++
		}
		t.Fatalf("%s and %s differ (sizes %d, %d; first difference at byte %d)", a, b, len(x), len(y), i)
	}
}
