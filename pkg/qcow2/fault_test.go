package qcow2_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// The fault-injection suite runs one workload (writes, zeroing, discard,
// flushes, journal checkpoints, internal snapshots, a live freeze, a live
// collapse, close) once per mutating I/O operation it issues (where it
// issues more than 500, as at 512-byte clusters, once per pickFaults'
// choice: each I/O site's first two, middle and last), failing that
// operation with EIO and then with ENOSPC, and requires:
//   - the operation's error reaches the caller of the engine call that
//     issued it;
//   - after a failed sync, no later Flush, Freeze or Close succeeds;
//   - what was acknowledged (a Flush, Freeze or Close that succeeded) is
//     never lost: the files as the process left them, as a power failure
//     leaves them (what was durable, with Linux's failed-sync semantics:
//     faultFile), and the image durable but the journal as written (the
//     pages a failed sync lost were dropped before a kill), each open,
//     read only acknowledged or later data, and check without corruption.

const (
	faultBlock = 4096
	faultDisk  = 1 << 20
)

var faultConfigs = []struct {
	name   string
	create qcow2.CreateOptions
	grow   int64 // the workload's resize: enough for a larger L1 table
	// journal: copy-on-write mappings wait in the write journal; without
	// it, each first write waits for a (group) sync.
	journal bool
}{
	{"v3", qcow2.CreateOptions{}, 8 << 30, true},
	{"extl2", qcow2.CreateOptions{ClusterSize: 16 << 10, ExtendedL2: true}, 8 << 30, true},
	{"lazy-nojournal", qcow2.CreateOptions{LazyRefcounts: true}, 8 << 30, false},
	// 512-byte clusters: a refcount block covers 128 KiB, so the
	// workload allocates new ones.
	// 64-bit refcounts: the refcount table of one cluster covers 2 MiB
	// of file, so the big write grows it.
	{"small", qcow2.CreateOptions{ClusterSize: 512, RefcountBits: 64}, 8 << 20, true},
}

// faultRun is one run of the workload.
type faultRun struct {
	t     *testing.T
	dir   string
	top   string
	snap  string
	plan  *faultPlan
	base  []byte
	cands [][][]byte // per block: what it may read as
	live  *qcow2.Live
	// syncFailed: a sync of this file failed; nothing may be
	// acknowledged after it while the volume still uses the file.
	syncFailed *faultFile
	errs       int
	grow       int64
}

func newFaultRun(t *testing.T, create qcow2.CreateOptions, grow int64, journal bool, plan *faultPlan) *faultRun {
	t.Helper()
	r := &faultRun{t: t, dir: memDir(t), plan: plan, grow: grow}
	r.top, r.snap = filepath.Join(r.dir, "top.qcow2"), filepath.Join(r.dir, "snap.qcow2")
	r.base = make([]byte, faultDisk)
	for i := range r.base {
		r.base[i] = byte(i/faultBlock + 1)
	}
	// A qcow2 base (written without faults), so that the live collapse
	// can drop the frozen layer onto it.
	base := filepath.Join(r.dir, "base.qcow2")
	if err := qcow2.Create(base, qcow2.CreateOptions{Size: faultDisk}); err != nil {
		t.Fatal(err)
	}
	bimg, err := qcow2.Open(base, qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bimg.WriteAt(r.base, 0); err != nil {
		t.Fatal(err)
	}
	if err := bimg.Close(); err != nil {
		t.Fatal(err)
	}
	create.BackingFile, create.BackingFormat = "base.qcow2", "qcow2"
	if err := qcow2.Create(r.top, create); err != nil {
		t.Fatal(err)
	}
	r.cands = make([][][]byte, faultDisk/faultBlock)
	for b := range r.cands {
		r.cands[b] = [][]byte{r.block(r.base, b)}
	}
	r.op("open", func() (err error) {
		r.live, err = qcow2.OpenLive(r.top, plan.hooks(qcow2.WithBoot(qcow2.Options{Journal: journal}, bootA)))
		return err
	})
	return r
}

func (r *faultRun) block(b []byte, i int) []byte {
	return slices.Clone(b[i*faultBlock : (i+1)*faultBlock])
}

// op runs one engine call and keeps the score: the injected fault, if it
// fired during the call, must come back as the call's error.
func (r *faultRun) op(name string, fn func() error) error {
	before := r.plan.didFire()
	err := fn()
	if fired := r.plan.didFire(); fired != "" && before == "" {
		if err == nil {
			r.t.Fatalf("%s: the fault injected at %s was not reported", name, fired)
		}
		if isSyncFault(fired) {
			r.syncFailed = r.plan.failedFile()
		}
	}
	if err != nil {
		r.errs++
	}
	return err
}

// isSyncFault: the fault failed a sync (or a durable write, whose sync
// half it is), which loses what it was to make durable.
func isSyncFault(site string) bool {
	return strings.HasSuffix(site, " sync") || strings.HasSuffix(site, " dsync-write")
}

func (r *faultRun) write(b int, tag byte) {
	val := bytes.Repeat([]byte{tag}, faultBlock)
	val[0] = byte(b)
	r.cands[b] = append(r.cands[b], val)
	if r.op("write", func() error { _, err := r.live.WriteAt(val, int64(b)*faultBlock); return err }) == nil {
		r.requireReads(b, val)
	}
}

func (r *faultRun) zero(b, n int, unmap bool) {
	for i := b; i < b+n; i++ {
		r.cands[i] = append(r.cands[i], make([]byte, faultBlock))
	}
	if r.op("zero", func() error { return r.live.WriteZeroes(int64(b)*faultBlock, int64(n)*faultBlock, unmap) }) == nil {
		for i := b; i < b+n; i++ {
			r.requireReads(i, make([]byte, faultBlock))
		}
	}
}

// requireReads: a write that succeeded reads back.
func (r *faultRun) requireReads(b int, want []byte) {
	got := make([]byte, faultBlock)
	if _, err := r.live.ReadAt(got, int64(b)*faultBlock); err != nil {
		r.t.Fatalf("read block %d: %v", b, err)
	}
	if !bytes.Equal(got, want) {
		r.t.Fatalf("block %d does not read what was written", b)
	}
}

// acknowledge is called after a Flush, Freeze or Close succeeded: what
// every block reads now is what it must read from now on.
func (r *faultRun) acknowledge(what string, read func([]byte) error) {
	if r.syncFailed != nil && r.inUse(r.syncFailed) {
		r.t.Fatalf("%s succeeded after a failed sync (%s)", what, r.plan.didFire())
	}
	disk := make([]byte, faultDisk)
	if err := read(disk); err != nil {
		r.t.Fatalf("reading after %s: %v", what, err)
	}
	for b := range r.cands {
		cur := r.block(disk, b)
		if !possible(r.cands[b], cur) {
			r.t.Fatalf("after %s block %d reads data never written there", what, b)
		}
		r.cands[b] = [][]byte{cur}
	}
}

// inUse reports whether f is the volume's writable top. (A freeze that
// failed removes its new overlay; the layer a freeze made is settled
// before its handle's last sync, which has nothing left to lose.)
func (r *faultRun) inUse(f *faultFile) bool {
	st, err := os.Stat(r.top)
	return err == nil && st.Sys().(*syscall.Stat_t).Ino == f.ino
}

func (r *faultRun) flush() {
	if r.op("flush", r.live.Flush) == nil {
		r.acknowledge("flush", func(p []byte) error { _, err := r.live.ReadAt(p, 0); return err })
	}
}

func (r *faultRun) withImage(name string, fn func(img *qcow2.Image) error) {
	r.op(name, func() error { return r.live.WithImage(fn) })
}

// applySnapshot reverts the disk to snapshot name, which read as content.
func (r *faultRun) applySnapshot(name string, content []byte) {
	for b := range r.cands {
		r.cands[b] = append(r.cands[b], r.block(content, b))
	}
	if r.op("apply snapshot", func() error {
		return r.live.WithImage(func(img *qcow2.Image) error { return img.ApplySnapshot(name) })
	}) == nil {
		for b := range r.cands {
			r.requireReads(b, r.block(content, b))
		}
	}
}

// workload is the sequence every run issues, whatever fails.
func (r *faultRun) workload() {
	if r.live == nil {
		return // the open failed
	}
	r.write(0, 0xa1)           // copy-on-write from the backing file: journaled
	r.write(17, 0xa2)          // another cluster
	r.write(1, 0xa3)           // same cluster as block 0
	for b := 24; b < 28; b++ { // a whole 16 KiB cluster with extended L2
		r.write(b, 0xa4)
	}
	r.write(25, 0xa5) // in place: extended L2 has no read mirror
	r.flush()         // checkpoint: the journaled data's first sync
	r.zero(40, 4, false)
	r.write(0, 0xb1) // in place
	r.write(60, 0xb2)
	r.op("discard", func() error { return r.live.Discard(17*faultBlock, 16*faultBlock) })
	r.cands[17] = append(r.cands[17], make([]byte, faultBlock))
	for i := 18; i < 33; i++ {
		r.cands[i] = append(r.cands[i], make([]byte, faultBlock))
	}
	r.flush() // the frees of the discard
	var atSnapshot []byte
	r.withImage("snapshot", func(img *qcow2.Image) error {
		if _, err := img.CreateSnapshot("s1"); err != nil {
			return err
		}
		atSnapshot = make([]byte, faultDisk)
		_, err := img.ReadAt(atSnapshot, 0)
		return err
	})
	r.write(0, 0xc1) // copy-on-write: the cluster is shared with s1
	r.write(100, 0xc2)
	r.flush()
	r.op("resize", func() error { // a larger L1 table
		return r.live.WithImage(func(img *qcow2.Image) error { return img.Resize(r.grow) })
	})
	// Past the checked disk (the model covers its first MiB): a write
	// that allocates 1 MiB, and its discard, whose frees outgrow what a
	// zeroing may leave pending.
	big := bytes.Repeat([]byte{0x77}, 1<<20)
	r.op("big write", func() error { _, err := r.live.WriteAt(big, 4<<20); return err })
	r.op("big discard", func() error { return r.live.Discard(4<<20, 1<<20) })
	r.flush()
	if atSnapshot != nil {
		r.applySnapshot("s1", atSnapshot)
	}
	r.withImage("delete snapshot", func(img *qcow2.Image) error { return img.DeleteSnapshot("s1") })
	r.write(2, 0xd1)
	if r.op("freeze", func() error { return r.live.Freeze(r.snap) }) == nil {
		r.acknowledge("freeze", func(p []byte) error { _, err := r.live.ReadAt(p, 0); return err })
	}
	r.write(0, 0xe1) // copy-on-write from the frozen layer
	r.write(200, 0xe2)
	r.flush()
	r.write(3, 0xf1)
	r.zero(60, 1, true)
	// A live collapse drops the frozen layer again: the copy into the
	// top, the Flush before the switch, the header rewrite.
	r.op("collapse", func() error {
		_, err := r.live.Collapse(context.Background(), qcow2.CollapseOptions{Base: filepath.Join(r.dir, "base.qcow2")})
		return err
	})
	r.write(4, 0xf2)
	r.flush()
	if r.op("close", r.live.Close) == nil {
		r.acknowledge("close", func(p []byte) error { return readDisk(r.top, p) })
	}
}

// pickFaults chooses which operations of a workload to fail, given the
// site of each (seq[k-1] is operation k's): every site's first two, its
// middle and its last occurrence. Each site fails where it first runs
// and where the state around it has grown; failing all of them (7,000
// operations at 512-byte clusters) would repeat the same code thousands
// of times.
func pickFaults(seq []string) []int {
	at := map[string][]int{}
	for i, site := range seq {
		at[site] = append(at[site], i+1)
	}
	var ks []int
	for _, occ := range at {
		ks = append(ks, occ[0], occ[min(1, len(occ)-1)], occ[len(occ)/2], occ[len(occ)-1])
	}
	slices.Sort(ks)
	return slices.Compact(ks)
}

func errnoName(e syscall.Errno) string {
	if e == syscall.ENOSPC {
		return "ENOSPC"
	}
	return "EIO"
}

// memDir is a temporary directory on tmpfs where there is one: the suite
// runs hundreds of workloads, and what it checks of durability is its
// own model's (faultFile), not the host's.
func memDir(t *testing.T) string {
	t.Helper()
	if st, err := os.Stat("/dev/shm"); err != nil || !st.IsDir() {
		return t.TempDir()
	}
	dir, err := os.MkdirTemp("/dev/shm", "csi-qcow2-fault-")
	if err != nil {
		return t.TempDir()
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// possible reports whether block got could be what the writes in cands
// left: each 512-byte sector is that of one of them (writes that were not
// acknowledged may have reached the disk in part, sector by sector).
func possible(cands [][]byte, got []byte) bool {
	const sector = 512
	for off := 0; off < len(got); off += sector {
		if !slices.ContainsFunc(cands, func(c []byte) bool { return bytes.Equal(c[off:off+sector], got[off:off+sector]) }) {
			return false
		}
	}
	return true
}

// readDisk reads the whole disk of the image at path, opened read-only.
func readDisk(path string, p []byte) error {
	img, err := qcow2.Open(path, qcow2.Options{ReadOnly: true})
	if err != nil {
		return err
	}
	defer img.Close()
	_, err = img.ReadAt(p, 0)
	return err
}

// endState is one way the files may be found after the run.
type endState struct {
	name    string
	boot    [16]byte
	image   func(f *faultFile, cur []byte) []byte // the content of a file the engine wrote
	journal func(f *faultFile, cur []byte) []byte
}

var faultEndStates = []endState{
	{"as left", bootA, keepCur, keepCur},
	{"power failure", bootB, durableOf, durableOf},
	{"lost pages, then a kill", bootA, lostPages, keepCur},
}

// lostPages: the pages a failed sync could not write were dropped, but
// for the header's (it stays cached: the journal bit with it).
func lostPages(f *faultFile, cur []byte) []byte { return f.evicted(cur, 4096) }

func keepCur(_ *faultFile, cur []byte) []byte { return cur }
func durableOf(f *faultFile, _ []byte) []byte { return f.durableCopy() }

// verify rebuilds the files in state s in a new directory, opens the
// volume as the driver would (RecoverFreeze, then a writable open that
// replays or discards the journal), and requires acknowledged data and a
// check without corruption.
func (r *faultRun) verify(s endState) {
	t := r.t
	to := memDir(t)
	ents, err := os.ReadDir(r.dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		from := filepath.Join(r.dir, e.Name())
		cur, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		st, err := os.Stat(from)
		if err != nil {
			t.Fatal(err)
		}
		if f := r.plan.fileByInode(st.Sys().(*syscall.Stat_t).Ino); f != nil {
			if filepath.Ext(e.Name()) == ".journal" {
				cur = s.journal(f, cur)
			} else {
				cur = s.image(f, cur)
			}
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), cur, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	top, snap := filepath.Join(to, "top.qcow2"), filepath.Join(to, "snap.qcow2")
	if _, err := qcow2.RecoverFreeze(top, snap); err != nil {
		t.Fatalf("%s: recovering the freeze: %v", s.name, err)
	}
	img, err := qcow2.Open(top, qcow2.WithBoot(qcow2.Options{Journal: true}, s.boot))
	if err != nil {
		t.Fatalf("%s: open: %v", s.name, err)
	}
	disk := make([]byte, faultDisk)
	if _, err := img.ReadAt(disk, 0); err != nil {
		t.Fatalf("%s: read: %v", s.name, err)
	}
	if err := img.Close(); err != nil {
		t.Fatalf("%s: close: %v", s.name, err)
	}
	for b := range r.cands {
		cur := r.block(disk, b)
		if !possible(r.cands[b], cur) {
			t.Fatalf("%s: block %d lost acknowledged data (reads %#x...)", s.name, b, cur[:2])
		}
	}
	for _, p := range []string{top, snap} {
		if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
			continue
		}
		res, err := qcow2.Check(p, qcow2.CheckOptions{})
		if err != nil || res.Corruptions != 0 || res.CheckErrors != 0 {
			t.Fatalf("%s: check %s: %+v %v", s.name, filepath.Base(p), res, err)
		}
	}
}

// TestFaultInjection fails each I/O operation of the workload in turn.
func TestFaultInjection(t *testing.T) {
	for _, cfg := range faultConfigs {
		t.Run(cfg.name, func(t *testing.T) {
			clean := newFaultPlan(0, 0)
			r := newFaultRun(t, cfg.create, cfg.grow, cfg.journal, clean)
			r.workload()
			if r.errs != 0 {
				t.Fatalf("the workload without faults failed %d calls", r.errs)
			}
			for _, s := range faultEndStates {
				r.verify(s)
			}
			total, picked := clean.n, pickFaults(clean.seq)
			if total <= 500 {
				picked = picked[:0]
				for k := 1; k <= total; k++ {
					picked = append(picked, k)
				}
			}
			for _, errno := range []syscall.Errno{syscall.EIO, syscall.ENOSPC} {
				for _, k := range picked {
					t.Run(fmt.Sprintf("%s-%d", errnoName(errno), k), func(t *testing.T) {
						t.Parallel()
						plan := newFaultPlan(k, errno)
						t.Cleanup(func() {
							if t.Failed() {
								t.Logf("%v at operation %d of %d (%s)", errno, k, total, plan.didFire())
							}
						})
						r := newFaultRun(t, cfg.create, cfg.grow, cfg.journal, plan)
						r.workload()
						for _, s := range faultEndStates {
							r.verify(s)
						}
					})
				}
			}
			t.Logf("%d operations at %d sites; %d of them failed, with EIO and with ENOSPC", total, len(clean.sites), len(picked))
		})
	}
}
