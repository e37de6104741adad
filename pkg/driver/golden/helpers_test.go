package golden

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/csi-qcow2/csi-qcow2/internal/qemutest"
	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// server serves byte slices by path on loopback and counts requests.
type server struct {
	*httptest.Server
	mu    sync.Mutex
	files map[string][]byte
	hits  map[string]*atomic.Int64
	// hold, if set for a path, is closed by the test to let that path's
	// body go past its first half; sentHalf is signalled when the first
	// half has been written.
	hold     map[string]chan struct{}
	sentHalf chan string
}

func newServer(t *testing.T) *server {
	s := &server{files: map[string][]byte{}, hits: map[string]*atomic.Int64{}, hold: map[string]chan struct{}{}, sentHalf: make(chan string, 16)}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

// put serves b at path and returns its URL and checksum.
func (s *server) put(path string, b []byte) Source {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.files[path] = b
	s.hits[path] = new(atomic.Int64)
	return Source{URL: s.URL + path, SHA256: sum(b)}
}

// holdHalf makes path's body stop after its first half until the
// returned func is called.
func (s *server) holdHalf(path string) (release func()) {
	ch := make(chan struct{})
	s.mu.Lock()
	s.hold[path] = ch
	s.mu.Unlock()
	var once sync.Once
	return func() { once.Do(func() { close(ch) }) }
}

func (s *server) count(path string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if h := s.hits[path]; h != nil {
		return h.Load()
	}
	return 0
}

func (s *server) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	b, ok := s.files[r.URL.Path]
	hold := s.hold[r.URL.Path]
	if h := s.hits[r.URL.Path]; h != nil {
		h.Add(1)
	}
	s.mu.Unlock()
	switch {
	case r.URL.Path == "/unavailable":
		http.Error(w, "try later", http.StatusServiceUnavailable)
		return
	case !ok:
		http.NotFound(w, r)
		return
	}
	if hold == nil {
		w.Write(b)
		return
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.Write(b[:len(b)/2])
	w.(http.Flusher).Flush()
	s.sentHalf <- r.URL.Path
	select {
	case <-hold:
		w.Write(b[len(b)/2:])
	case <-r.Context().Done():
	}
}

// newImporter returns an Importer over fresh directories.
func newImporter(t *testing.T) *Importer {
	dir := t.TempDir()
	return &Importer{Dir: filepath.Join(dir, "images"), TmpDir: filepath.Join(dir, "tmp")}
}

// rawImage is size bytes of disk-like content: random and text-like
// data with zero runs, seeded so that runs repeat.
func rawImage(size int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, 7))
	b := make([]byte, size)
	for off := 0; off < size; off += 64 << 10 {
		end := min(off+64<<10, size)
		switch rng.IntN(3) {
		case 0: // zeros
		case 1:
			for i := off; i < end; i++ {
				b[i] = byte(rng.Uint32())
			}
		default:
			for i := off; i < end; i++ {
				b[i] = 'a' + byte(rng.IntN(8))
			}
		}
	}
	return b
}

func gzipped(t *testing.T, b []byte) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func zstded(t *testing.T, b []byte) []byte {
	w, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	return w.EncodeAll(b, nil)
}

// engineQcow2 writes b into a new qcow2 image made by the engine and
// returns the image file's bytes.
func engineQcow2(t *testing.T, b []byte) []byte {
	path := filepath.Join(t.TempDir(), "src.qcow2")
	if err := qcow2.Create(path, qcow2.CreateOptions{Size: int64(len(b)), ClusterSize: 4096}); err != nil {
		t.Fatal(err)
	}
	img, err := qcow2.Open(path, qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for off := 0; off < len(b); off += 4096 {
		if blk := b[off : off+4096]; !bytes.Equal(blk, make([]byte, 4096)) {
			if _, err := img.WriteAt(blk, int64(off)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	return readFile(t, path)
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// readImage reads the whole guest content of a published image.
func readImage(t *testing.T, path string) []byte {
	t.Helper()
	img, err := qcow2.Open(path, qcow2.Options{ReadOnly: true, Backing: qcow2.BackingPolicy{Standalone: true}})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	b := make([]byte, img.Size())
	if _, err := img.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

// assertPublished checks the image's shape with qemu-img: clean, compat
// 1.1, 64 KiB clusters, no backing file, read-only mode.
func assertPublished(t *testing.T, path string, virtualSize int64) {
	t.Helper()
	qemutest.MustCheckClean(t, path, "qcow2")
	in := qemutest.Info(t, path, "qcow2")
	if in.VirtualSize != virtualSize || in.ClusterSize != 64<<10 || in.FormatSpecific.Data.Compat != "1.1" || in.BackingFilename != "" || in.FormatSpecific.Data.DataFile != "" {
		t.Errorf("%s: size %d (want %d), cluster %d, compat %s, backing %q, data file %q", path, in.VirtualSize, virtualSize, in.ClusterSize, in.FormatSpecific.Data.Compat, in.BackingFilename, in.FormatSpecific.Data.DataFile)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != publishMode {
		t.Errorf("%s: %v, mode %v", path, err, st.Mode())
	}
}

// assertNothingLeft checks that an import left nothing: no image for
// sha in Dir and no file in TmpDir.
func assertNothingLeft(t *testing.T, im *Importer, sha string) {
	t.Helper()
	if _, err := os.Stat(im.Path(sha)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s exists after a failed import (%v)", im.Path(sha), err)
	}
	ents, _ := os.ReadDir(im.tmpDir())
	for _, e := range ents {
		t.Errorf("left in TmpDir: %s", e.Name())
	}
}

// wantInvalid runs an import that must fail with ErrInvalid and a message
// containing want, and leave nothing.
func wantInvalid(t *testing.T, im *Importer, src Source, want string) {
	t.Helper()
	_, _, err := im.Import(context.Background(), src)
	t.Logf("%s: %v", clip(src.URL), err)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), want) {
		t.Errorf("Import(%s): %v; want ErrInvalid saying %q", clip(src.URL), err, want)
	}
	if validSHA256(src.SHA256) {
		assertNothingLeft(t, im, src.SHA256)
	}
}

func needQemu(t *testing.T) { testtools.Need(t, "qemu-img", "qemu-io") }

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
