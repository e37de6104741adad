package qcow2nbd

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// TestCollapseUnderFio (issue 9, acceptance 6): a volume whose chain is a
// golden image and 10 frozen layers is served over NBD, and collapsed
// onto the golden image while fio writes random blocks through the
// server and verifies them (as it goes, and all of them at the end). fio
// finds no verify error, a second fio run verifies every block again
// through the collapsed chain, the image checks clean, QEMU reads it
// byte for byte as the server did, and no dropped layer's file changed.
func TestCollapseUnderFio(t *testing.T) {
	testtools.Need(t, "qemu-img", "nbdcopy", "fio")
	const size, layers = 64 << 20, 10
	root := t.TempDir()
	vol, golden, snaps := buildCollapseChain(t, root, size, layers)
	hashes := map[string][32]byte{}
	for _, s := range snaps {
		hashes[s] = hashFile(t, s)
	}
	live, err := qcow2.OpenLive(vol, qcow2.Options{Backing: qcow2.BackingPolicy{Root: root}, Journal: true})
	if err != nil {
		t.Fatal(err)
	}
	b := &countingBackend{Image: New(live, false)}
	srv := serveBackend(t, b, live.Close)

	// fio writes 32 MiB of blocks of mixed sizes in random order, each
	// once, verifying a backlog of them as it goes and all at the end.
	job := []string{"--name=collapse", "--ioengine=nbd", "--uri=" + srv.uri, "--rw=randwrite",
		"--bssplit=4k/60:64k/30:256k/10", "--iodepth=16", "--offset=16M", "--size=32M",
		"--randseed=7", "--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0"}
	fio := exec.Command("fio", append(job, "--do_verify=1", "--verify_backlog=64")...)
	fio.Dir = t.TempDir()
	var out bytes.Buffer // read once fio has exited
	fio.Stdout, fio.Stderr = &out, &out
	start := time.Now()
	if err := fio.Start(); err != nil {
		t.Fatal(err)
	}
	fioDone := make(chan error, 1)
	var exited atomic.Bool
	go func() {
		err := fio.Wait()
		exited.Store(true)
		fioDone <- err
	}()

	// The collapse's first step waits until fio is writing, so that it
	// runs while fio does.
	var atStart, reports int64
	collapseStart := time.Now()
	dropped, err := live.Collapse(context.Background(), qcow2.CollapseOptions{
		Base: golden,
		Progress: func(p qcow2.CollapseProgress) {
			if reports++; reports == 1 {
				testtools.WaitFor(t, "fio's first 64 writes", func() bool { return b.writes.Load() >= 64 || exited.Load() })
				atStart = b.writes.Load()
			}
		},
	})
	collapseTime := time.Since(collapseStart)
	atEnd := b.writes.Load()
	if err != nil {
		t.Fatalf("Collapse: %v", err)
	}
	if err := testtools.Within(t, "fio", fioDone); err != nil {
		t.Fatalf("fio: %v\n%s", err, out.String())
	}
	fioTime := time.Since(start)
	if len(dropped) != layers {
		t.Fatalf("dropped %q, want the %d frozen layers", dropped, layers)
	}
	if got := live.Info().BackingFilename; got != "../images/golden.qcow2" {
		t.Errorf("backing file %q after the collapse", got)
	}
	t.Logf("collapse: %v, %d progress reports; fio: %v, %d writes in all, %d before the collapse's first step, %d by its end",
		collapseTime.Round(time.Millisecond), reports, fioTime.Round(time.Millisecond), b.writes.Load(), atStart, atEnd)

	// Every block fio wrote, read again through the collapsed chain.
	run(t, "fio", append(job, "--verify_only")...)

	final := filepath.Join(t.TempDir(), "final.raw")
	run(t, "nbdcopy", srv.uri, final)
	srv.stop()
	run(t, "qemu-img", "check", vol)
	res, err := qcow2.Check(vol, qcow2.CheckOptions{})
	if err != nil || res.Corruptions+res.Leaks+res.CheckErrors != 0 {
		t.Fatalf("check: %+v, %v", res, err)
	}
	run(t, "qemu-img", "compare", "-f", "qcow2", "-F", "raw", vol, final)
	for s, h := range hashes {
		if hashFile(t, s) != h {
			t.Errorf("%s changed", s)
		}
	}
}

// countingBackend counts the writes the server passes on.
type countingBackend struct {
	*Image
	writes atomic.Int64
}

func (b *countingBackend) WriteAt(p []byte, off int64) (int, error) {
	b.writes.Add(1)
	return b.Image.WriteAt(p, off)
}

// buildCollapseChain lays out the driver's store under root: a golden
// image of random data (its last quarter unallocated), a volume over it,
// and layers frozen layers between them (Live.Freeze), each with its own
// writes, zeroings and a discard over the whole disk. It returns the
// volume's, the golden image's and the layers' paths.
func buildCollapseChain(t *testing.T, root string, size int64, layers int) (vol, golden string, snaps []string) {
	t.Helper()
	for _, d := range []string{"images", "volumes", "snapshots"} {
		if err := os.Mkdir(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	pol := qcow2.BackingPolicy{Root: root}
	golden = filepath.Join(root, "images", "golden.qcow2")
	if err := qcow2.Create(golden, qcow2.CreateOptions{Size: size}); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	img, err := qcow2.Open(golden, qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, size*3/4)
	fillRandom(rng, data)
	if _, err := img.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	vol = filepath.Join(root, "volumes", "v.qcow2")
	if err := qcow2.Create(vol, qcow2.CreateOptions{BackingFile: "../images/golden.qcow2", BackingFormat: "qcow2", Backing: pol}); err != nil {
		t.Fatal(err)
	}
	live, err := qcow2.OpenLive(vol, qcow2.Options{Backing: pol})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := live.Close(); err != nil {
			t.Fatal(err)
		}
	}()
	buf := make([]byte, 1<<20)
	for i := 1; i <= layers; i++ {
		for range 16 {
			n := 1 + rng.Int64N(int64(len(buf)))
			off := rng.Int64N(size - n)
			fillRandom(rng, buf[:n])
			if _, err := live.WriteAt(buf[:n], off); err != nil {
				t.Fatal(err)
			}
		}
		for k := range 2 {
			n := 1 + rng.Int64N(2<<20)
			if err := live.WriteZeroes(rng.Int64N(size-n), n, k == 0); err != nil {
				t.Fatal(err)
			}
		}
		n := 1 + rng.Int64N(1<<20)
		if err := live.Discard(rng.Int64N(size-n), n); err != nil {
			t.Fatal(err)
		}
		snap := filepath.Join(root, "snapshots", fmt.Sprintf("s%d.qcow2", i))
		if err := live.Freeze(snap); err != nil {
			t.Fatal(err)
		}
		snaps = append(snaps, snap)
	}
	return vol, golden, snaps
}

func fillRandom(rng *rand.Rand, b []byte) {
	for i := 0; i+8 <= len(b); i += 8 {
		v := rng.Uint64()
		for k := range 8 {
			b[i+k] = byte(v >> (8 * k))
		}
	}
	for i := len(b) &^ 7; i < len(b); i++ {
		b[i] = byte(rng.Uint32())
	}
}

func hashFile(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}
