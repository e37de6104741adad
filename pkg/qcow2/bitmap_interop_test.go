package qcow2_test

// Persistent bitmaps against QEMU: bitmaps made by `qemu-img bitmap` are
// maintained by the engine's guest writes; after Close, qemu-img check is
// clean, qemu-img info lists them consistent, and qemu-nbd exports exactly
// the dirty ranges the writes imply (read with nbdinfo --map).

import (
	"bytes"
	"encoding/binary"

	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/qemutest"
	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

const (
	bmSize = 64 << 20
	kib    = int64(1024)
	mib    = 1024 * kib
)

// bmImage makes a 64 MiB image with qemu-img and three bitmaps: b0
// (enabled, 64 KiB), b1 (enabled, 128 KiB), b2 (disabled, 64 KiB).
func bmImage(t *testing.T) string {
	t.Helper()
	testtools.Need(t, "qemu-img")
	p := filepath.Join(t.TempDir(), "bm.qcow2")
	qemutest.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", p, strconv.Itoa(bmSize))
	qemutest.Run(t, "qemu-img", "bitmap", "--add", p, "b0")
	qemutest.Run(t, "qemu-img", "bitmap", "--add", "-g", "128K", p, "b1")
	qemutest.Run(t, "qemu-img", "bitmap", "--add", "--disable", p, "b2")
	return p
}

// qemuBitmapFlags returns name -> flags as `qemu-img info` reports them.
func qemuBitmapFlags(t *testing.T, path string) map[string]string {
	t.Helper()
	out := qemutest.Run(t, "qemu-img", "info", "-U", "--output=json", path)
	got := map[string]string{}
	// A light parse: the bitmaps list is the only place with "granularity".
	blocks := strings.Split(string(out), "\"flags\": [")
	for _, b := range blocks[1:] {
		flagsPart, rest, _ := strings.Cut(b, "]")
		var flags []string
		for _, f := range strings.Split(flagsPart, ",") {
			if f = strings.Trim(strings.TrimSpace(f), "\""); f != "" {
				flags = append(flags, f)
			}
		}
		_, name, _ := strings.Cut(rest, "\"name\": \"")
		name, _, _ = strings.Cut(name, "\"")
		got[name] = strings.Join(flags, ",")
	}
	return got
}

// qemuDirty reads a bitmap's dirty ranges through qemu-nbd -B and nbdinfo.
func qemuDirty(t *testing.T, path, name string) [][2]int64 {
	t.Helper()
	testtools.Need(t, "qemu-nbd", "nbdinfo")
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	srv := exec.Command("qemu-nbd", "-r", "-f", "qcow2", "-B", name, "--socket="+sock, path)
	var stderr bytes.Buffer
	srv.Stderr = &stderr
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = srv.Wait(); close(exited) }()
	defer func() {
		_ = srv.Process.Kill()
		<-exited
	}()
	// nbdinfo itself is the probe: the socket may exist before qemu-nbd
	// listens, and qemu-nbd serves one client only, so no other probe
	// may connect first.
	var out []byte
	testtools.WaitFor(t, "qemu-nbd to serve bitmap "+name+" on "+sock, func() bool {
		select {
		case <-exited:
			t.Fatalf("qemu-nbd exited: %s", stderr.String())
		default:
		}
		var err error
		out, err = exec.Command("nbdinfo", "--map=qemu:dirty-bitmap:"+name, "nbd+unix:///?socket="+sock).Output()
		return err == nil
	})
	var got [][2]int64
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			t.Fatalf("nbdinfo line %q", line)
		}
		if f[2] != "1" {
			continue
		}
		off, _ := strconv.ParseInt(f[0], 10, 64)
		n, _ := strconv.ParseInt(f[1], 10, 64)
		got = append(got, [2]int64{off, n})
	}
	return got
}

func engineDirty(t *testing.T, path, name string) [][2]int64 {
	t.Helper()
	img, err := qcow2.Open(path, qcow2.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	got, err := img.BitmapDirty(name)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// bmWrites are the guest changes of the first session and the ranges they
// dirty in b0 (64 KiB granularity) and b1 (128 KiB).
func bmWrites(t *testing.T, img *qcow2.Image) {
	t.Helper()
	if _, err := img.WriteAt(bytes.Repeat([]byte{1}, 4096), 1*mib); err != nil {
		t.Fatal(err)
	}
	if _, err := img.WriteAt(bytes.Repeat([]byte{2}, 8192), 10*mib+60*kib); err != nil { // straddles two chunks
		t.Fatal(err)
	}
	if err := img.WriteZeroes(20*mib, 256*kib, true); err != nil {
		t.Fatal(err)
	}
	if err := img.Discard(40*mib, 64*kib); err != nil {
		t.Fatal(err)
	}
}

var (
	bmWantB0 = [][2]int64{{1 * mib, 64 * kib}, {10 * mib, 128 * kib}, {20 * mib, 256 * kib}, {40 * mib, 64 * kib}}
	bmWantB1 = [][2]int64{{1 * mib, 128 * kib}, {10 * mib, 128 * kib}, {20 * mib, 256 * kib}, {40 * mib, 128 * kib}}
)

func wantFlags(t *testing.T, path string, want map[string]string) {
	t.Helper()
	if got := qemuBitmapFlags(t, path); !reflect.DeepEqual(got, want) {
		t.Fatalf("qemu-img info bitmaps: got %v, want %v", got, want)
	}
}

func wantDirty(t *testing.T, path, name string, want [][2]int64) {
	t.Helper()
	if got := qemuDirty(t, path, name); !reflect.DeepEqual(got, want) {
		t.Errorf("bitmap %s as qemu-nbd exports it: got %v, want %v", name, got, want)
	}
	if got := engineDirty(t, path, name); !reflect.DeepEqual(got, want) {
		t.Errorf("bitmap %s as the engine reads it: got %v, want %v", name, got, want)
	}
}

func TestBitmapsMaintainedForQemu(t *testing.T) {
	p := bmImage(t)
	session(t, p, func(img *qcow2.Image) {
		// Open marked the enabled bitmaps in use, durably, before any write.
		wantFlags(t, p, map[string]string{"b0": "in-use,auto", "b1": "in-use,auto", "b2": ""})
		bmWrites(t, img)
	})
	qemutest.MustCheckClean(t, p, "qcow2")
	wantFlags(t, p, map[string]string{"b0": "auto", "b1": "auto", "b2": ""})
	wantDirty(t, p, "b0", bmWantB0)
	wantDirty(t, p, "b1", bmWantB1)
	wantDirty(t, p, "b2", nil)

	// A session without writes keeps the stored data (in-place flag update).
	session(t, p, func(img *qcow2.Image) {
	})
	qemutest.MustCheckClean(t, p, "qcow2")
	wantFlags(t, p, map[string]string{"b0": "auto", "b1": "auto", "b2": ""})
	wantDirty(t, p, "b0", bmWantB0)

	// A third session adds to the bits; the old tables are freed.
	session(t, p, func(img *qcow2.Image) {
		if _, err := img.WriteAt(make([]byte, 512), bmSize-512); err != nil {
			t.Fatal(err)
		}
	})
	qemutest.MustCheckClean(t, p, "qcow2")
	wantDirty(t, p, "b0", append(bmWantB0, [2]int64{bmSize - 64*kib, 64 * kib}))
	// QEMU itself opens and stores what the engine wrote.
	qemutest.QemuIO(t, p, "qcow2", qemutest.Write(30*mib, 4096, 7))
	qemutest.MustCheckClean(t, p, "qcow2")
	wantDirty(t, p, "b0", []([2]int64){{1 * mib, 64 * kib}, {10 * mib, 128 * kib}, {20 * mib, 256 * kib}, {30 * mib, 64 * kib}, {40 * mib, 64 * kib}, {bmSize - 64*kib, 64 * kib}})
}

// A crash (the process killed) after open leaves the enabled bitmaps in
// use; QEMU and the engine then agree: check is clean, the bitmaps stay in
// use (inconsistent) through repair and through the next writable session,
// and the disabled one is untouched.
func TestBitmapsCrashLeavesInUse(t *testing.T) {
	p := bmImage(t)
	crashed, data := crashCopy(t, p, func(img *qcow2.Image) { bmWrites(t, img) })
	inUse := map[string]string{"b0": "in-use,auto", "b1": "in-use,auto", "b2": ""}
	wantFlags(t, crashed, inUse)
	q := qemutest.Check(t, crashed, "qcow2", "")
	res, err := qcow2.CheckFile(mustOpenRaw(t, crashed, false), qcow2.CheckOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode() != q.ExitCode || int64(res.Leaks) != q.Leaks || int64(res.Corruptions) != q.Corruptions {
		t.Fatalf("check of the crashed image: engine %+v, qemu-img %s", *res, q.Output)
	}
	// Reserved clusters leak in a crash (rule 3); nothing worse.
	if q.ExitCode != 0 && q.ExitCode != 3 {
		t.Fatalf("qemu-img check of the crashed image: %s", q.Output)
	}
	var repaired string
	for _, tool := range []string{"qemu", "engine"} {
		repaired = filepath.Join(t.TempDir(), tool+".qcow2")
		if err := os.WriteFile(repaired, data, 0o644); err != nil {
			t.Fatal(err)
		}
		if tool == "qemu" {
			qemutest.Check(t, repaired, "qcow2", "all")
		} else if _, err := qcow2.CheckFile(mustOpenRaw(t, repaired, true), qcow2.CheckOptions{Repair: qcow2.RepairAll}); err != nil {
			t.Fatal(err)
		}
		wantFlags(t, repaired, inUse)
	}
	// The next writable session keeps them in use and stores nothing new.
	session(t, repaired, func(img *qcow2.Image) {
		if _, err := img.WriteAt([]byte{1}, 0); err != nil {
			t.Fatal(err)
		}
	})
	qemutest.MustCheckClean(t, repaired, "qcow2")
	wantFlags(t, repaired, inUse)
	wantDirty(t, repaired, "b2", nil)
	if _, err := engineDirtyErr(repaired, "b0"); err == nil {
		t.Fatal("the engine read an in-use bitmap")
	}
}

// crashCopy opens path writable, runs f, flushes and copies the file as a
// kill would leave it (no Close) to a new file, which it returns with its
// content; then it closes the image.
func crashCopy(t *testing.T, path string, f func(img *qcow2.Image)) (string, []byte) {
	t.Helper()
	crashed := filepath.Join(t.TempDir(), "crashed.qcow2")
	var data []byte
	session(t, path, func(img *qcow2.Image) {
		f(img)
		if err := img.Flush(); err != nil {
			t.Fatal(err)
		}
		var err error
		if data, err = os.ReadFile(path); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(crashed, data, 0o644); err != nil {
			t.Fatal(err)
		}
	})
	return crashed, data
}

// session opens path writable, runs f and closes it.
func session(t *testing.T, path string, f func(img *qcow2.Image)) {
	t.Helper()
	img, err := qcow2.Open(path, qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	f(img)
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
}

func engineDirtyErr(path, name string) ([][2]int64, error) {
	img, err := qcow2.Open(path, qcow2.Options{ReadOnly: true})
	if err != nil {
		return nil, err
	}
	defer img.Close()
	return img.BitmapDirty(name)
}

func mustOpenRaw(t *testing.T, path string, writable bool) qcow2.File {
	t.Helper()
	flag := os.O_RDONLY
	if writable {
		flag = os.O_RDWR
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		t.Fatal(err)
	}
	file := qcow2.NewOSFile(f)
	t.Cleanup(func() { _ = file.Close() })
	return file
}

// Resize holds every bitmap at the new size (the disabled one too, as
// QEMU does); the grown range counts as dirty in enabled bitmaps. An
// inconsistent bitmap blocks a resize, as in QEMU.
func TestBitmapsResize(t *testing.T) {
	p := bmImage(t)
	session(t, p, func(img *qcow2.Image) {
		bmWrites(t, img)
		if err := img.Resize(2 * bmSize); err != nil {
			t.Fatal(err)
		}
	})
	qemutest.MustCheckClean(t, p, "qcow2")
	wantFlags(t, p, map[string]string{"b0": "auto", "b1": "auto", "b2": ""})
	wantDirty(t, p, "b0", append(slices.Clone(bmWantB0), [2]int64{bmSize, bmSize}))
	wantDirty(t, p, "b2", nil)
	qemutest.QemuIO(t, p, "qcow2", qemutest.Write(2*bmSize-4096, 4096, 9))
	qemutest.MustCheckClean(t, p, "qcow2")

	// Shrinking back: the bitmaps follow.
	session(t, p, func(img *qcow2.Image) {
		if err := img.WriteZeroes(bmSize, bmSize, true); err != nil {
			t.Fatal(err)
		}
		if err := img.Resize(bmSize); err != nil {
			t.Fatal(err)
		}
	})
	qemutest.MustCheckClean(t, p, "qcow2")
	wantDirty(t, p, "b0", bmWantB0)

	// An in-use bitmap (a crash while it was enabled) blocks a resize.
	crashed, _ := crashCopy(t, p, func(*qcow2.Image) {})
	session(t, crashed, func(img *qcow2.Image) {
		if err := img.Resize(2 * bmSize); !errors.Is(err, qcow2.ErrUnsupported) {
			t.Fatalf("Resize with an inconsistent bitmap: %v, want ErrUnsupported", err)
		}
	})
	if got := qemuBitmapFlags(t, crashed)["b0"]; got != "in-use,auto" {
		t.Fatalf("b0 flags %q after a refused resize", got)
	}
}

// Reverting to an internal snapshot may change any byte: the enabled
// bitmaps become all dirty.
func TestBitmapsSnapshotRevert(t *testing.T) {
	p := bmImage(t)
	session(t, p, func(img *qcow2.Image) {
		if _, err := img.CreateSnapshot("s1"); err != nil {
			t.Fatal(err)
		}
		if err := img.ApplySnapshot("s1"); err != nil {
			t.Fatal(err)
		}
	})
	qemutest.MustCheckClean(t, p, "qcow2")
	wantDirty(t, p, "b0", [][2]int64{{0, bmSize}})
	wantDirty(t, p, "b2", nil)
}

// bmPatchDir applies f to the bitmap directory of the image at path (and
// to the header extension's 24 bytes).
func bmPatchDir(t *testing.T, path string, f func(ext, dir []byte)) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	be := binary.BigEndian
	off := int(be.Uint32(b[100:]))
	for {
		typ, n := be.Uint32(b[off:]), int(be.Uint32(b[off+4:]))
		if typ == 0 {
			t.Fatal("no bitmaps extension")
		}
		if typ == 0x23852875 {
			ext := b[off+8 : off+8+24]
			dirOff, dirSize := be.Uint64(ext[16:]), be.Uint64(ext[8:])
			f(ext, b[dirOff:dirOff+dirSize])
			break
		}
		off += 8 + (n+7)&^7
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// Bitmaps the engine cannot maintain (here: an unknown type, which QEMU
// refuses to open) are listed by a read-only open, and dropped by a
// writable one, after which the image checks clean: the refcount rebuild
// freed their clusters.
func TestBitmapsUnmaintainableDropped(t *testing.T) {
	p := bmImage(t)
	qemutest.QemuIO(t, p, "qcow2", qemutest.Write(0, 64*kib, 5))
	bmPatchDir(t, p, func(_, dir []byte) { dir[16] = 2 }) // b0's type
	before, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	ro, err := qcow2.Open(p, qcow2.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if bms, err := ro.Bitmaps(); err != nil || len(bms) != 3 {
		t.Fatalf("read-only listing: %v %v", bms, err)
	}
	_ = ro.Close()
	if after, _ := os.ReadFile(p); !bytes.Equal(before, after) {
		t.Fatal("a read-only open changed the image")
	}
	session(t, p, func(img *qcow2.Image) {
		if bms, err := img.Bitmaps(); err != nil || len(bms) != 0 {
			t.Fatalf("after the drop: %v %v", bms, err)
		}
		if _, err := img.WriteAt([]byte{1}, 2*mib); err != nil {
			t.Fatal(err)
		}
	})
	qemutest.MustCheckClean(t, p, "qcow2")
	if got := qemuBitmapFlags(t, p); len(got) != 0 {
		t.Fatalf("qemu-img info still lists bitmaps: %v", got)
	}
	got := qemutest.ReadGuest(t, p, "qcow2")
	if !bytes.Equal(got[:64*kib], bytes.Repeat([]byte{5}, int(64*kib))) || got[2*mib] != 1 {
		t.Fatal("guest data changed")
	}
}

// A directory that cannot be read (more bitmaps announced than present)
// is an error for listing; a writable open clears the autoclear bit and
// works, leaving the directory's clusters for `check -r leaks`.
func TestBitmapsBrokenDirectory(t *testing.T) {
	p := bmImage(t)
	bmPatchDir(t, p, func(ext, _ []byte) { binary.BigEndian.PutUint32(ext, 4) })
	ro, err := qcow2.Open(p, qcow2.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ro.Bitmaps(); !errors.Is(err, qcow2.ErrInvalid) {
		t.Fatalf("listing a broken directory: %v", err)
	}
	_ = ro.Close()
	session(t, p, func(img *qcow2.Image) {
		if _, err := img.WriteAt([]byte{1}, 0); err != nil {
			t.Fatal(err)
		}
	})
	if h := mustHeader(t, p); h.AutoclearFeatures&1 != 0 {
		t.Fatal("the bitmaps autoclear bit is still set")
	}
	if q := qemutest.Check(t, p, "qcow2", "leaks"); q.ExitCode != 0 {
		t.Fatalf("check -r leaks: %s", q.Output)
	}
	qemutest.MustCheckClean(t, p, "qcow2")
}

func mustHeader(t *testing.T, path string) qcow2.Header {
	t.Helper()
	img, err := qcow2.Open(path, qcow2.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	return img.Header()
}

// A live external snapshot stores the bitmaps into the frozen layer when
// its handle closes (QEMU stores them when the layer becomes read-only):
// they are consistent there and record the writes made before the freeze.
// The new top starts without bitmaps.
func TestBitmapsFreeze(t *testing.T) {
	p := bmImage(t)
	dir := filepath.Dir(p)
	l, err := qcow2.OpenLive(p, qcow2.Options{Backing: qcow2.BackingPolicy{Root: dir}})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.WithImage(func(img *qcow2.Image) error { bmWrites(t, img); return nil }); err != nil {
		t.Fatal(err)
	}
	snap := filepath.Join(dir, "snap.qcow2")
	if err := l.Freeze(snap); err != nil {
		t.Fatal(err)
	}
	if _, err := l.WriteAt([]byte{9}, 30*mib); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	qemutest.MustCheckClean(t, snap, "qcow2")
	qemutest.MustCheckClean(t, p, "qcow2")
	wantFlags(t, snap, map[string]string{"b0": "auto", "b1": "auto", "b2": ""})
	wantDirty(t, snap, "b0", bmWantB0)
	if got := qemuBitmapFlags(t, p); len(got) != 0 {
		t.Fatalf("the new top has bitmaps: %v", got)
	}
}

// An enabled bitmap whose table does not match the disk size (QEMU
// refuses such an image) makes a writable open fall back to the spec's
// rule: the autoclear bit is cleared and the image works.
func TestBitmapsDamagedTableFallsBack(t *testing.T) {
	p := bmImage(t)
	bmPatchDir(t, p, func(_, dir []byte) { binary.BigEndian.PutUint32(dir[8:], 2) }) // b0: 2 table entries, 1 needed
	session(t, p, func(img *qcow2.Image) {
		if bms, err := img.Bitmaps(); err != nil || len(bms) != 0 {
			t.Fatalf("bitmaps after the fallback: %v %v", bms, err)
		}
		if _, err := img.WriteAt([]byte{1}, 0); err != nil {
			t.Fatal(err)
		}
	})
	if h := mustHeader(t, p); h.AutoclearFeatures&1 != 0 {
		t.Fatal("the bitmaps autoclear bit is still set")
	}
	if q := qemutest.Check(t, p, "qcow2", ""); q.ExitCode != 0 && q.ExitCode != 3 {
		t.Fatalf("qemu-img check: %s", q.Output)
	}
}

// Small clusters and a fine granularity: the bitmap's table spans several
// clusters (allocated as one run) and its data many.
func TestBitmapsMultiClusterTable(t *testing.T) {
	testtools.Need(t, "qemu-img")
	p := filepath.Join(t.TempDir(), "small.qcow2")
	qemutest.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=512", p, "256M")
	qemutest.Run(t, "qemu-img", "bitmap", "--add", "-g", "512", p, "fine")
	var want [][2]int64
	session(t, p, func(img *qcow2.Image) {
		for i := int64(0); i < 40; i++ {
			off := i * 6 * mib
			if _, err := img.WriteAt(make([]byte, 700), off); err != nil {
				t.Fatal(err)
			}
			want = append(want, [2]int64{off, 1024})
		}
	})
	qemutest.MustCheckClean(t, p, "qcow2")
	wantFlags(t, p, map[string]string{"fine": "auto"})
	wantDirty(t, p, "fine", want)
}

// Writers in parallel (in-place and allocating writes race on the shared
// and exclusive lock) all reach the bitmap.
func TestBitmapsConcurrentWriters(t *testing.T) {
	p := bmImage(t)
	const writers, perWriter = 4, 50
	session(t, p, func(img *qcow2.Image) {
		var wg sync.WaitGroup
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range perWriter {
					// Each chunk is written twice: allocating, then in place.
					off := int64(w*perWriter+i%25) * 256 * kib
					if _, err := img.WriteAt(make([]byte, 4096), off+int64(i%3)*4096); err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
	})
	got := engineDirty(t, p, "b0")
	for w := range writers {
		for i := range 25 {
			off := int64(w*perWriter+i) * 256 * kib
			if !covered(got, off, 64*kib) {
				t.Fatalf("the write at %d is not in b0 (%v)", off, got)
			}
		}
	}
	if n := len(got); n != writers*25 {
		t.Fatalf("%d dirty ranges, want %d", n, writers*25)
	}
	qemutest.MustCheckClean(t, p, "qcow2")
	wantDirty(t, p, "b0", got)
}

// Extended L2 entries: subcluster writes and zeroes reach the bitmap too.
func TestBitmapsExtendedL2(t *testing.T) {
	testtools.Need(t, "qemu-img")
	p := filepath.Join(t.TempDir(), "ext.qcow2")
	qemutest.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "extended_l2=on", p, "64M")
	qemutest.Run(t, "qemu-img", "bitmap", "--add", "-g", "4K", p, "sub")
	session(t, p, func(img *qcow2.Image) {
		if _, err := img.WriteAt(make([]byte, 2048), 1*mib+2048); err != nil {
			t.Fatal(err)
		}
		if err := img.WriteZeroes(3*mib, 8192, false); err != nil {
			t.Fatal(err)
		}
	})
	qemutest.MustCheckClean(t, p, "qcow2")
	wantDirty(t, p, "sub", [][2]int64{{1 * mib, 4096}, {3 * mib, 8192}})
}
