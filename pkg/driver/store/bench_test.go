package store

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// The driver's operations on volumes of 1 GiB and 1 TiB with 64 MiB
// written: each must cost the same whatever the virtual size (an O(1)
// overlay or freeze), beside a host-path-style clone (a copy of the
// volume's sparse raw file, what csi-driver-host-path does). `make
// bench-driver`; results in docs/benchmarks.md.

const benchWritten = 64 << 20

var benchSizes = []struct {
	name string
	size int64
}{{"1GiB", 1 << 30}, {"1TiB", 1 << 40}}

// benchStore is a store with a golden image of size with 64 MiB written
// and a volume over it with another 64 MiB of its own.
func benchStore(b *testing.B, size int64) (*Store, ImageRef, string) {
	b.Helper()
	root := b.TempDir()
	sha := fmt.Sprintf("%064x", size)
	s, err := Open(Config{Root: root, Node: "bench", MaxChainDepth: 1 << 20,
		ImportImage: func(ctx context.Context, url, sum string) error {
			_, err := os.Stat(filepath.Join(root, imagesDir, sum+".qcow2"))
			return err
		}})
	if err != nil {
		b.Fatal(err)
	}
	img := s.lay.imagePath(sha)
	if err := qcow2.Create(img, qcow2.CreateOptions{Size: size}); err != nil {
		b.Fatal(err)
	}
	fillImage(b, img, 0xb1)
	ref := ImageRef{URL: "http://golden.invalid/image", SHA256: sha}
	v, err := s.CreateVolume(context.Background(), VolumeSpec{Name: "source", Image: &ref})
	if err != nil {
		b.Fatal(err)
	}
	l, release, err := s.Hold(v.ID)
	if err != nil {
		b.Fatal(err)
	}
	writeSpread(b, l, size, 0x5a)
	if err := release(); err != nil {
		b.Fatal(err)
	}
	return s, ref, v.ID
}

// writeSpread writes 64 MiB in 1 MiB pieces spread over the disk.
func writeSpread(b *testing.B, d interface {
	WriteAt([]byte, int64) (int, error)
	Flush() error
}, size int64, fill byte) {
	p := bytes.Repeat([]byte{fill}, 1<<20)
	step := size / (benchWritten >> 20)
	for off := int64(0); off+int64(len(p)) <= size && off < step*(benchWritten>>20); off += step {
		if _, err := d.WriteAt(p, off); err != nil {
			b.Fatal(err)
		}
	}
	if err := d.Flush(); err != nil {
		b.Fatal(err)
	}
}

func fillImage(b *testing.B, path string, fill byte) {
	img, err := qcow2.Open(path, qcow2.Options{})
	if err != nil {
		b.Fatal(err)
	}
	writeSpread(b, img, img.Size(), fill)
	if err := img.Close(); err != nil {
		b.Fatal(err)
	}
}

func BenchmarkDriverOps(b *testing.B) {
	ctx := context.Background()
	for _, sz := range benchSizes {
		b.Run("CreateFromImage/"+sz.name, func(b *testing.B) {
			s, ref, _ := benchStore(b, sz.size)
			for i := range b.N {
				if _, err := s.CreateVolume(ctx, VolumeSpec{Name: fmt.Sprint("v", i), Image: &ref}); err != nil {
					b.Fatal(err)
				}
			}
		})
		for _, typ := range []string{TypeExternal, TypeInternal} {
			b.Run("Snapshot"+typ+"/"+sz.name, func(b *testing.B) {
				s, _, src := benchStore(b, sz.size)
				serve(b, s, src)
				b.ResetTimer()
				for i := range b.N {
					if _, err := s.CreateSnapshot(ctx, SnapshotSpec{Name: fmt.Sprint("s", i), Volume: src, Type: typ}); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("Restore"+typ+"/"+sz.name, func(b *testing.B) {
				// Restores after the first (an internal snapshot's first
				// is RestoreinternalFirst).
				s, _, src := benchStore(b, sz.size)
				sn, err := s.CreateSnapshot(ctx, SnapshotSpec{Name: "snap", Volume: src, Type: typ})
				if err != nil {
					b.Fatal(err)
				}
				if _, err := s.CreateVolume(ctx, VolumeSpec{Name: "first", Source: &Source{Kind: SourceSnapshot, ID: sn.ID}}); err != nil {
					b.Fatal(err)
				}
				b.ResetTimer()
				for i := range b.N {
					if _, err := s.CreateVolume(ctx, VolumeSpec{Name: fmt.Sprint("r", i), Source: &Source{Kind: SourceSnapshot, ID: sn.ID}}); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
		for _, changed := range []bool{false, true} {
			name := "RestoreinternalFirst/"
			if changed {
				name = "RestoreinternalFirstChanged/"
			}
			b.Run(name+sz.name, func(b *testing.B) {
				restoreInternalFirst(b, sz.size, changed)
			})
		}
		b.Run("Clone/"+sz.name, func(b *testing.B) {
			s, _, src := benchStore(b, sz.size)
			serve(b, s, src)
			b.ResetTimer()
			for i := range b.N {
				if _, err := s.CreateVolume(ctx, VolumeSpec{Name: fmt.Sprint("c", i), Source: &Source{Kind: SourceVolume, ID: src}}); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("HostPathCopy/"+sz.name, func(b *testing.B) {
			// The same volume as a host-path driver keeps it: a sparse raw
			// file with the image's and the volume's 64 MiB each, cloned
			// with cp as that driver does.
			dir := b.TempDir()
			raw := filepath.Join(dir, "volume.raw")
			f, err := os.Create(raw)
			if err != nil {
				b.Fatal(err)
			}
			if err := f.Truncate(sz.size); err != nil {
				b.Fatal(err)
			}
			writeSpread(b, rawFile{f}, sz.size, 0xb1)
			writeSpread(b, rawFile{f}, sz.size-(1<<20), 0x5a)
			f.Close()
			b.ResetTimer()
			for i := range b.N {
				dst := filepath.Join(dir, fmt.Sprint("clone", i))
				if out, err := exec.Command("cp", "-a", "--sparse=always", raw, dst).CombinedOutput(); err != nil {
					b.Fatalf("cp: %v %s", err, out)
				}
				b.StopTimer()
				os.Remove(dst)
				b.StartTimer()
			}
		})
	}
}

// restoreInternalFirst times the first restore from each of b.N internal
// snapshots of a served volume. The restore freezes the volume's top and
// makes a layer of what changed since the snapshot: nothing, or (changed)
// the volume's 64 MiB, all rewritten after the snapshot.
func restoreInternalFirst(b *testing.B, size int64, changed bool) {
	ctx := context.Background()
	s, _, src := benchStore(b, size)
	l := serve(b, s, src)
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		sn, err := s.CreateSnapshot(ctx, SnapshotSpec{Name: fmt.Sprint("s", i), Volume: src, Type: TypeInternal})
		if err != nil {
			b.Fatal(err)
		}
		if changed {
			writeSpread(b, l, size-(1<<20), byte(i+1))
		}
		b.StartTimer()
		if _, err := s.CreateVolume(ctx, VolumeSpec{Name: fmt.Sprint("r", i), Source: &Source{Kind: SourceSnapshot, ID: sn.ID}}); err != nil {
			b.Fatal(err)
		}
	}
}

// serve holds volume id open for the rest of the benchmark, as the node
// service does for a volume in use: its snapshots and clones go through
// the open handle.
func serve(b *testing.B, s *Store, id string) *qcow2.Live {
	l, release, err := s.Hold(id)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { release() })
	return l
}

type rawFile struct{ *os.File }

func (f rawFile) Flush() error { return f.Sync() }
