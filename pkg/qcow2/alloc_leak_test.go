package qcow2

import (
	"bytes"
	"math/rand/v2"
	"os"
	"testing"
)

// ext4LoadPeak bounds what ext4Load ever has in use at once: the 32 MiB
// tree, nine 1 MiB files, group metadata and L2 and refcount tables.
const ext4LoadPeak = 48 << 20

// ext4Load drives img the way mkfs.ext4 and a file copy load on the mounted
// filesystem drive an NBD device: the whole device discarded, group
// metadata written and inode tables zeroed, then files written in 64 KiB
// pieces with a flush after each file, older files deleted and trimmed.
// It ends with discards that no flush has followed yet; the caller
// inspects the file as a kill leaves it.
func ext4Load(t *testing.T, img *Image, size int64) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	const group = 32 << 20
	// mkfs: BLKDISCARD of the whole device (the NBD driver takes it in one
	// request).
	must(img.Discard(0, size))
	meta := bytes.Repeat([]byte{0xe4}, 4096)
	for g := int64(0); g < size; g += group {
		_, err := img.WriteAt(meta, g)
		must(err)
		must(img.WriteZeroes(g+1<<20, 2<<20, false))
	}
	must(img.Flush())

	rng := rand.New(rand.NewPCG(40, 2))
	piece := bytes.Repeat([]byte{0x5a}, 64<<10)
	const file = 1 << 20
	var live []int64
	for i := 0; i < 160; i++ {
		off := group*rng.Int64N(size/group) + 4<<20 + file*rng.Int64N(24)
		for p := int64(0); p < file; p += int64(len(piece)) {
			_, err := img.WriteAt(piece, off+p)
			must(err)
		}
		must(img.Flush())
		live = append(live, off)
		if len(live) > 8 { // rm of an old file, then fstrim of its blocks
			must(img.Discard(live[0], file))
			must(img.WriteZeroes(live[0], 64<<10, true))
			live = live[1:]
			must(img.Flush())
		}
	}

	// rm -rf of a large tree and fstrim, killed before the journal commit
	// would flush: the deferred frees pile up.
	big := bytes.Repeat([]byte{0x77}, file)
	for off := int64(0); off < 32<<20; off += file {
		_, err := img.WriteAt(big, 128<<20+off)
		must(err)
	}
	must(img.Flush())
	for off := int64(0); off < 32<<20; off += file {
		must(img.Discard(128<<20+off, file))
	}
}

// A kill -9 of the serving process loses the reservation pool and the
// deferred frees, which leak (DESIGN.md rule 3 allows it). Under an
// ext4-like load the leak must stay a small bound, not a multiple of the
// data in use, and the file must not grow past the disk it serves.
func TestKillLeaksBoundedUnderExt4Load(t *testing.T) {
	const size = 256 << 20
	for _, tc := range []struct {
		name string
		opts CreateOptions
	}{
		{"plain", CreateOptions{Size: size}},
		{"extended-l2", CreateOptions{Size: size, ExtendedL2: true}},
		{"lazy", CreateOptions{Size: size, LazyRefcounts: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newTestImage(t, tc.opts)
			img, err := Open(p, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			ext4Load(t, img, size)

			// The kill: the image is never closed; the kernel holds
			// everything the process wrote, which a second handle sees.
			// It force-shares (img check -U): the "killed" writer
			// still holds its lock, which a real kill would drop.
			res, err := Check(p, CheckOptions{ForceShare: true})
			if err != nil {
				t.Fatal(err)
			}
			st, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			cs := img.cs
			// The unused part of one reservation batch (at most 1/32 of
			// the disk), as many deferred frees, and a few requests.
			bound := 2*int64(size/32)/cs + 64
			t.Logf("after the kill: %d clusters allocated, %d leaked (bound %d), file %d MiB",
				res.AllocatedClusters, res.Leaks, bound, st.Size()>>20)
			if res.Corruptions != 0 || res.CheckErrors != 0 {
				t.Fatalf("check after the kill: %+v", res)
			}
			if int64(res.Leaks) > bound {
				t.Errorf("%d clusters leaked by the kill, want at most %d", res.Leaks, bound)
			}
			// Freed clusters are reused before the file grows: it ends
			// within the bound past the most the load ever had in use.
			if st.Size() > ext4LoadPeak+bound*cs {
				t.Errorf("file is %d bytes for at most %d bytes ever in use: more than the leak bound past it", st.Size(), int64(ext4LoadPeak))
			}
		})
	}
}
