package golden

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/qemutest"
	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
)

// TestImportRefusesRequest: bad checksums and URLs are refused before
// anything is fetched.
func TestImportRefusesRequest(t *testing.T) {
	srv := newServer(t)
	im := newImporter(t)
	good := srv.put("/a.img", make([]byte, 512))
	for _, tc := range []struct{ src Source }{
		{Source{URL: good.URL}},
		{Source{URL: good.URL, SHA256: strings.ToUpper(good.SHA256)}},
		{Source{URL: good.URL, SHA256: good.SHA256[:63]}},
		{Source{URL: good.URL, SHA256: good.SHA256[:63] + "g"}},
		{Source{URL: good.URL, SHA256: "../../etc/passwd"}},
	} {
		wantInvalid(t, im, tc.src, "sha256")
	}
	for _, tc := range []struct{ url, want string }{
		{"ftp://example.com/a.img", `scheme "ftp"`},
		{"data:,hello", `scheme "data"`},
		{"/var/lib/a.img", "no scheme"},
		{"a.img", "no scheme"},
		{"http:///a.img", "no host"},
		{"http://[::1", "URL"},
	} {
		wantInvalid(t, im, Source{URL: tc.url, SHA256: good.SHA256}, tc.want)
	}
	if n := srv.count("/a.img"); n != 0 {
		t.Errorf("%d requests for refused sources", n)
	}
	if im.Path("../x") != "" || im.Path(strings.ToUpper(good.SHA256)) != "" {
		t.Errorf("Path accepts what is not a sha256")
	}
}

// TestImportRefusesContent: what the server sends is refused when it is
// not what was asked for or not a disk image; server errors are refused
// as invalid (4xx) or transient (5xx); nothing is left either way.
func TestImportRefusesContent(t *testing.T) {
	srv := newServer(t)
	im := newImporter(t)
	raw := rawImage(1<<20, 4)
	vmdk := append([]byte("KDMV"), make([]byte, 508)...)
	vdi := make([]byte, 1024)
	binary.LittleEndian.PutUint32(vdi[0x40:], vdiMagic)
	gz := gzipped(t, raw)
	corrupt := bytes.Clone(gz)
	corrupt[len(corrupt)/2] ^= 0xff
	corrupt[len(corrupt)/2+1] ^= 0xff
	for _, tc := range []struct {
		name string
		src  Source
		want string
	}{
		{"mismatch", Source{URL: srv.put("/raw", raw).URL, SHA256: sum([]byte("other"))}, "checksum mismatch: expected sha256 " + sum([]byte("other")) + ", got " + sum(raw)},
		{"mismatch-gzip", Source{URL: srv.put("/gz", gz).URL, SHA256: sum(raw)}, "checksum mismatch"},
		{"404", Source{URL: srv.URL + "/nothing-here", SHA256: sum(raw)}, "404 Not Found"},
		{"empty", srv.put("/empty", nil), "empty: not a disk image"},
		{"html", srv.put("/page.html", []byte("<html><body>Not found, but 200</body></html>\n")), "not a disk image"},
		{"vmdk", srv.put("/x.vmdk", vmdk), "VMDK"},
		{"vdi", srv.put("/x.vdi", vdi), "VDI"},
		{"corrupt-gzip", srv.put("/corrupt.gz", corrupt), "gzip stream is corrupt"},
		{"truncated-gzip", srv.put("/short.gz", gz[:len(gz)/2]), "gzip stream is corrupt"},
		{"trailing-zstd", srv.put("/trail.zst", append(zstded(t, raw), "garbage"...)), "zstd"},
	} {
		t.Run(tc.name, func(t *testing.T) { wantInvalid(t, im, tc.src, tc.want) })
	}
	_, _, err := im.Import(context.Background(), Source{URL: srv.URL + "/unavailable", SHA256: sum(raw)})
	if err == nil || errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "503") {
		t.Errorf("503: %v; want a transient error", err)
	}
	assertNothingLeft(t, im, sum(raw))
}

// TestImportRefusesQcow2: a qcow2 image that names a backing file
// (absolute, relative, json:), uses an external data file or is past the
// engine's bounds or MaxVirtualSize is refused, saying why.
func TestImportRefusesQcow2(t *testing.T) {
	needQemu(t)
	srv := newServer(t)
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	qemutest.CreateRaw(t, base, 1<<20)
	mk := func(name, size string, args ...string) Source {
		path := filepath.Join(dir, name)
		qemutest.Run(t, "qemu-img", append(append([]string{"create", "-q", "-f", "qcow2"}, args...), path, size)...)
		return srv.put("/"+name, readFile(t, path))
	}
	mk("plain.qcow2", "1M")
	hugeL1 := readFile(t, filepath.Join(dir, "plain.qcow2"))
	binary.BigEndian.PutUint64(hugeL1[24:], 1<<55)   // virtual size
	binary.BigEndian.PutUint32(hugeL1[36:], 1<<30-1) // l1_size: 8 GiB of L1 table
	im := newImporter(t)
	for _, tc := range []struct {
		name string
		src  Source
		want string
	}{
		{"absolute", mk("abs.qcow2", "1M", "-u", "-b", base, "-F", "raw"), "backing file"},
		{"relative", mk("rel.qcow2", "1M", "-u", "-b", "base.raw", "-F", "raw"), "backing file"},
		{"json", mk("json.qcow2", "1M", "-u", "-b", `json:{"file":{"driver":"file","filename":"/etc/passwd"}}`, "-F", "raw"), "backing file"},
		{"data-file", mk("data.qcow2", "1M", "-o", "data_file="+filepath.Join(dir, "data.raw")), "external data file"},
		{"huge-l1", srv.put("/huge-l1.qcow2", hugeL1), "cannot be imported"},
		{"virtual-size", mk("big.qcow2", "100T"), "virtual size"},
	} {
		t.Run(tc.name, func(t *testing.T) { wantInvalid(t, im, tc.src, tc.want) })
	}
}

// TestImportRefusesTooBig: MaxDownloadBytes and MaxVirtualSize bound
// plain and compressed sources, announced lengths included.
func TestImportRefusesTooBig(t *testing.T) {
	srv := newServer(t)
	raw := rawImage(2<<20, 5)
	im := newImporter(t)
	im.MaxDownloadBytes = 1 << 20
	wantInvalid(t, im, srv.put("/big", raw), "MaxDownloadBytes")
	root := t.TempDir()
	writeFile(t, filepath.Join(root, "big.img"), raw)
	im.FileRoots = []string{root}
	wantInvalid(t, im, Source{URL: "file://" + root + "/big.img", SHA256: sum(raw)}, "MaxDownloadBytes")

	im = newImporter(t)
	im.MaxVirtualSize = 1 << 20
	wantInvalid(t, im, srv.put("/big", raw), "virtual size")
	wantInvalid(t, im, srv.put("/big.zst", zstded(t, raw)), "decompresses to more than")
}

// TestImportRefusesBombs: compressed streams that expand past the ratio
// bounds are refused early, zeros or data.
func TestImportRefusesBombs(t *testing.T) {
	srv := newServer(t)
	im := newImporter(t)
	// Data: 256 MiB of one non-zero byte, over 1000x.
	wantInvalid(t, im, srv.put("/data.zst", testtools.ZstdRepeat(t, 0x01, 256<<20)), "decompression bomb")
	// Zeros: 2 GiB, far over 4096x.
	wantInvalid(t, im, srv.put("/zeros.zst", testtools.ZstdRepeat(t, 0, 2<<30)), "decompression bomb")
	// Zeros past MaxVirtualSize, gzip.
	im.MaxVirtualSize = 8 << 20
	wantInvalid(t, im, srv.put("/zeros.gz", gzipped(t, make([]byte, 32<<20))), "decompresses to more than")
}
