package driver

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/csi-qcow2/csi-qcow2/internal/qemutest"
	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
)

// imageServer serves byte strings on loopback by path.
type imageServer struct {
	*httptest.Server
	mu    sync.Mutex
	files map[string][]byte
}

func newImageServer(t *testing.T) *imageServer {
	s := &imageServer{files: map[string][]byte{}}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		b, ok := s.files[r.URL.Path]
		s.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Write(b)
	}))
	t.Cleanup(s.Close)
	return s
}

// put serves b at path and returns the StorageClass parameters naming it.
func (s *imageServer) put(path string, b []byte) map[string]string {
	s.mu.Lock()
	s.files[path] = b
	s.mu.Unlock()
	sum := sha256.Sum256(b)
	return map[string]string{paramImageURL: s.URL + path, paramImageSHA256: hex.EncodeToString(sum[:])}
}

// A volume from a golden image reads the image; an image that is not what
// its parameters say, not an image, names other files, or is hostile is
// refused with InvalidArgument saying why, and nothing is stored.
func TestGoldenImageVolumes(t *testing.T) {
	d, _ := startDriver(t, Config{})
	c := controllerServer{d: d}
	ctx := context.Background()
	st, _ := d.store()
	srv := newImageServer(t)
	create := func(name string, params map[string]string) (*csi.CreateVolumeResponse, error) {
		return c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, Parameters: params,
			VolumeCapabilities: []*csi.VolumeCapability{blockCap()}})
	}

	raw := bytes.Repeat([]byte("golden image "), 1<<20/13+1)[:1<<20]
	good := srv.put("/good.raw", raw)
	v, err := create("pvc-golden", good)
	if err != nil {
		t.Fatal(err)
	}
	if v.GetVolume().GetCapacityBytes() != int64(len(raw)) {
		t.Errorf("volume is %d bytes, the image %d", v.GetVolume().GetCapacityBytes(), len(raw))
	}
	if again, err := create("pvc-golden", good); err != nil || again.GetVolume().GetVolumeId() != v.GetVolume().GetVolumeId() {
		t.Errorf("retry: %v, %v", again, err)
	}
	l, release, err := st.Hold(v.GetVolume().GetVolumeId())
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(raw))
	if _, err := l.ReadAt(got, 0); err != nil || !bytes.Equal(got, raw) {
		t.Errorf("the volume does not read the image: %v", err)
	}
	release()

	dir := t.TempDir()
	qcow2Image := func(name string, args ...string) []byte {
		path := filepath.Join(dir, name)
		qemutest.Run(t, "qemu-img", append(append([]string{"create", "-q", "-f", "qcow2"}, args...), path, "1M")...)
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	hugeL1 := qcow2Image("huge.qcow2")
	binary.BigEndian.PutUint64(hugeL1[24:], 1<<55)   // virtual size
	binary.BigEndian.PutUint32(hugeL1[36:], 1<<30-1) // l1_size: 8 GiB of L1 table
	wrongSum := srv.put("/wrong.raw", raw)
	wrongSum[paramImageSHA256] = strings.Repeat("0", 64)
	cases := []struct {
		name   string
		params map[string]string
		msg    string
	}{
		{"wrong checksum", wrongSum, "checksum mismatch"},
		{"not found", map[string]string{paramImageURL: srv.URL + "/none", paramImageSHA256: strings.Repeat("1", 64)}, "404"},
		{"not an image", srv.put("/page.html", []byte("<html><body>Welcome</body></html>\n")), "not a disk image"},
		{"not http", map[string]string{paramImageURL: "ftp://127.0.0.1/x", paramImageSHA256: strings.Repeat("1", 64)}, "ftp"},
		{"file outside the allowed roots", map[string]string{paramImageURL: "file:///etc/passwd", paramImageSHA256: strings.Repeat("1", 64)}, "file"},
		{"absolute backing file", srv.put("/abs.qcow2", qcow2Image("abs.qcow2", "-u", "-b", "/etc/passwd", "-F", "raw")), "backing file"},
		{"relative backing file", srv.put("/rel.qcow2", qcow2Image("rel.qcow2", "-u", "-b", "../volumes/x.json", "-F", "raw")), "backing file"},
		{"json backing file", srv.put("/json.qcow2", qcow2Image("json.qcow2", "-u", "-b", `json:{"file":{"driver":"file","filename":"/etc/shadow"}}`, "-F", "raw")), "backing file"},
		{"external data file", srv.put("/data.qcow2", qcow2Image("data.qcow2", "-o", "data_file="+filepath.Join(dir, "data.raw"))), "external data file"},
		{"huge L1 table", srv.put("/huge.qcow2", hugeL1), "cannot be imported"},
		{"decompression bomb", srv.put("/bomb.zst", testtools.ZstdRepeat(t, 0x01, 256<<20)), "decompression bomb"},
	}
	before := storeState(t, st.Root())
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := create("pvc-bad", tc.params)
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), tc.msg) {
				t.Errorf("got %v, want InvalidArgument with %q", err, tc.msg)
			}
			if after := storeState(t, st.Root()); !maps.Equal(before, after) {
				t.Errorf("the store changed")
			}
		})
	}
}
