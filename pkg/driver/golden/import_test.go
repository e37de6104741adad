package golden

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/qemutest"
)

// TestImportFormats: raw and qcow2 sources, plain, gzip and zstd, are
// published as standalone qcow2 images that read back byte for byte, and
// Info says what was fetched.
func TestImportFormats(t *testing.T) {
	needQemu(t)
	srv := newServer(t)
	raw := rawImage(3<<20+512*3, 1)
	q := engineQcow2(t, raw[:3<<20])
	for _, tc := range []struct {
		name, format, compression string
		body, want                []byte
	}{
		{"raw", FormatRaw, "", raw, raw},
		{"raw.gz", FormatRaw, "gzip", gzipped(t, raw), raw},
		{"raw.zst", FormatRaw, "zstd", zstded(t, raw), raw},
		{"qcow2", FormatQcow2, "", q, raw[:3<<20]},
		{"qcow2.gz", FormatQcow2, "gzip", gzipped(t, q), raw[:3<<20]},
		{"qcow2.zst", FormatQcow2, "zstd", zstded(t, q), raw[:3<<20]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			im := newImporter(t)
			var last Progress
			im.Progress = func(p Progress) { last = p }
			src := srv.put("/"+tc.name, tc.body)
			path, info, err := im.Import(context.Background(), src)
			if err != nil {
				t.Fatal(err)
			}
			if path != im.Path(src.SHA256) || path != filepath.Join(im.Dir, src.SHA256+".qcow2") {
				t.Errorf("published at %s", path)
			}
			want := Info{VirtualSize: int64(len(tc.want)), SourceFormat: tc.format, Compression: tc.compression, DownloadedBytes: int64(len(tc.body)), AllocatedBytes: info.AllocatedBytes}
			if info != want || info.AllocatedBytes <= 0 {
				t.Errorf("info %+v, want %+v", info, want)
			}
			if got := readImage(t, path); !bytes.Equal(got, tc.want) {
				t.Errorf("the image does not read back as the source")
			}
			assertPublished(t, path, int64(len(tc.want)))
			if last.Phase != PhaseConvert || !last.Final || last.Done != int64(len(tc.want)) || last.SHA256 != src.SHA256 {
				t.Errorf("last progress %+v", last)
			}
			if ents, _ := os.ReadDir(im.tmpDir()); len(ents) != 0 {
				t.Errorf("%d files left in TmpDir", len(ents))
			}
		})
	}
}

// TestImportQemuImages: qcow2 images QEMU wrote (compressed clusters,
// zero clusters, internal snapshots, 2 MiB and 512-byte clusters, compat
// 0.10) import to images qemu-img compare finds identical.
func TestImportQemuImages(t *testing.T) {
	needQemu(t)
	srv := newServer(t)
	dir := t.TempDir()
	raw := filepath.Join(dir, "src.raw")
	if err := os.WriteFile(raw, rawImage(4<<20, 2), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, o := range []qemutest.ImageOptions{
		{Compat: "0.10", Size: 4 << 20},
		{ClusterSize: 512, Size: 4 << 20},
		{ClusterSize: 2 << 20, Size: 4 << 20, LazyRefcounts: true},
		{ExtendedL2: true, ClusterSize: 64 << 10, Size: 4 << 20},
	} {
		t.Run(o.String(), func(t *testing.T) {
			path := filepath.Join(dir, o.String()+".qcow2")
			qemutest.CreateImage(t, path, o)
			qemutest.Run(t, "qemu-img", "convert", "-n", "-f", "raw", "-O", "qcow2", raw, path)
			qemutest.QemuIOCommands(t, path, "qcow2", "write -z 1M 256k", "write -P 0x5c 3M 4k")
			qemutest.CreateSnapshot(t, path, "s1")
			qemutest.QemuIOCommands(t, path, "qcow2", "write -P 0x11 0 64k")
			im := newImporter(t)
			out, _, err := im.Import(context.Background(), srv.put("/"+o.String(), readFile(t, path)))
			if err != nil {
				t.Fatal(err)
			}
			qemutest.MustCompare(t, path, "qcow2", out, "qcow2")
			assertPublished(t, out, 4<<20)
		})
	}
	t.Run("compressed", func(t *testing.T) {
		path := filepath.Join(dir, "c.qcow2")
		qemutest.ConvertCompressed(t, raw, "raw", path, qemutest.ImageOptions{Extra: []string{"compression_type=zstd"}})
		im := newImporter(t)
		out, _, err := im.Import(context.Background(), srv.put("/c", readFile(t, path)))
		if err != nil {
			t.Fatal(err)
		}
		qemutest.MustCompare(t, raw, "raw", out, "qcow2")
	})
}

// TestImportReusesExisting: an image imported before is returned without
// a request, whatever the URL (one that would fail included).
func TestImportReusesExisting(t *testing.T) {
	srv := newServer(t)
	im := newImporter(t)
	raw := rawImage(1<<20, 3)
	src := srv.put("/a.img", raw)
	path, _, err := im.Import(context.Background(), src)
	if err != nil {
		t.Fatal(err)
	}
	started := 0
	im.Metrics.Started = func() { started++ }
	for _, url := range []string{src.URL, srv.URL + "/missing", srv.URL + "/unavailable"} {
		again, info, err := im.Import(context.Background(), Source{URL: url, SHA256: src.SHA256})
		if err != nil || again != path {
			t.Fatalf("%s: %s, %v", url, again, err)
		}
		if !info.Reused || info.VirtualSize != 1<<20 || info.DownloadedBytes != 0 || info.AllocatedBytes <= 0 {
			t.Errorf("%s: info %+v", url, info)
		}
	}
	if n := srv.count("/a.img"); n != 1 {
		t.Errorf("%d requests for the image, want 1", n)
	}
	if n := srv.count("/missing") + srv.count("/unavailable"); n != 0 || started != 0 {
		t.Errorf("%d requests, %d imports started for an image already there", n, started)
	}
}
