package golden

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// Defaults of the Importer's bounds.
const (
	// DefaultMaxDownloadBytes bounds the bytes fetched for one image.
	DefaultMaxDownloadBytes = 64 << 30
	// DefaultMaxVirtualSize bounds an image's virtual size.
	DefaultMaxVirtualSize = 64 << 40
)

// Importer imports golden images into Dir. Its fields are set before the
// first call and not changed after; its methods are safe for concurrent
// use.
type Importer struct {
	// Dir is the images directory: an image is published as
	// Dir/<sha256>.qcow2.
	Dir string
	// TmpDir holds an import's scratch files. It must be on the same file
	// system as Dir (the image is renamed into Dir). Empty: Dir/.tmp.
	TmpDir string
	// FileRoots are the directories file: URLs may name files under.
	// Empty: file: URLs are refused.
	FileRoots []string
	// Client fetches http and https URLs. Nil: a client with bounded
	// dial, TLS handshake and response header waits. Either way a
	// download that receives nothing for two minutes is given up on.
	Client *http.Client
	// MaxDownloadBytes bounds the bytes fetched for one image; 0 means
	// DefaultMaxDownloadBytes.
	MaxDownloadBytes int64
	// MaxVirtualSize bounds the virtual size of an image (and what a
	// compressed stream may decompress to); 0 means DefaultMaxVirtualSize.
	MaxVirtualSize int64
	// MemoryBudget is the engine's bound on the metadata a fetched qcow2
	// image may make it hold (qcow2.Options.MemoryBudget); 0 means
	// qcow2.DefaultMemoryBudget.
	MemoryBudget int64
	// Progress, if set, hears how imports go: at most once a second per
	// phase, and at each phase's end. It is called from the goroutine
	// doing the import; keep it short.
	Progress func(Progress)
	// Metrics, if set, counts imports.
	Metrics Metrics
	// MaxImportTime bounds one import (0: DefaultMaxImportTime). An
	// import outlives the callers that wait for it (flight.go).
	MaxImportTime time.Duration

	mu      sync.Mutex
	flights map[string]*flight // imports running, by sha256 and URL
	active  map[string]bool    // scratch files in use (Collect spares them)
	base    context.Context    // what imports run under (flight.go)
	stop    context.CancelFunc // cancels base: Shutdown
	closed  bool               // Shutdown was called
	running sync.WaitGroup     // imports not yet cleaned up

	// Test seams: hook is called as an import reaches each step, with
	// the import's context; now and stall replace time.Now and
	// stallTimeout.
	hook  func(ctx context.Context, step string)
	now   func() time.Time
	stall time.Duration
}

// Metrics are the counters an Importer feeds; nil funcs are skipped.
type Metrics struct {
	// Started is called when an import starts fetching (not for an image
	// already there, nor for a caller that joins a running import).
	Started func()
	// Finished is called when that import ends: err nil means published.
	// info.DownloadedBytes counts the bytes fetched either way.
	Finished func(info Info, err error)
}

// Info describes an imported image.
type Info struct {
	// VirtualSize is the guest-visible size in bytes.
	VirtualSize int64
	// SourceFormat is what the source held (after transport
	// decompression): FormatQcow2 or FormatRaw; "" when Reused.
	SourceFormat string
	// Compression is the transport compression: "gzip", "zstd" or "".
	Compression string
	// DownloadedBytes is how many bytes were fetched (what the checksum
	// covers); 0 when Reused.
	DownloadedBytes int64
	// AllocatedBytes is what the published image occupies on disk.
	AllocatedBytes int64
	// Reused: the image had been imported already; nothing was fetched.
	Reused bool
}

func (im *Importer) tmpDir() string {
	if im.TmpDir == "" {
		return filepath.Join(im.Dir, ".tmp")
	}
	return im.TmpDir
}

func (im *Importer) maxDownload() int64 {
	if im.MaxDownloadBytes <= 0 {
		return DefaultMaxDownloadBytes
	}
	return im.MaxDownloadBytes
}

func (im *Importer) maxVirtualSize() int64 {
	if im.MaxVirtualSize <= 0 {
		return DefaultMaxVirtualSize
	}
	return im.MaxVirtualSize
}

// maxDecompressed bounds a decompressed stream: a raw image is at most
// MaxVirtualSize, a qcow2 file a little more (its metadata).
func (im *Importer) maxDecompressed() int64 {
	return im.maxVirtualSize() + im.maxVirtualSize()/8
}

func (im *Importer) stallTimeout() time.Duration {
	if im.stall > 0 {
		return im.stall
	}
	return stallTimeout
}

func (im *Importer) clock() time.Time {
	if im.now != nil {
		return im.now()
	}
	return time.Now()
}

func (im *Importer) step(ctx context.Context, name string) {
	if im.hook != nil {
		im.hook(ctx, name)
	}
}

// Path is where the image with this SHA-256 is (or would be) published;
// "" if sha256 is not 64 lowercase hex characters, so that no caller's
// string becomes a path.
func (im *Importer) Path(sha256 string) string {
	if !validSHA256(sha256) {
		return ""
	}
	return filepath.Join(im.Dir, sha256+".qcow2")
}

// Import makes sure the image src names is in Dir and returns its path.
// An image imported before (by its SHA-256, whatever its URL) is returned
// at once; concurrent calls for one SHA-256 share one download, and each
// caller's ctx ends its own wait only (the shared import stops when no
// caller waits for it any more). Errors caused by the source or the
// request wrap ErrInvalid.
func (im *Importer) Import(ctx context.Context, src Source) (string, Info, error) {
	loc, err := parseSource(src, im.FileRoots)
	if err != nil {
		return "", Info{}, err
	}
	if im.Dir == "" {
		return "", Info{}, errors.New("golden: the Importer has no Dir")
	}
	if info, ok, err := im.existing(src.SHA256); err != nil {
		return "", Info{}, err
	} else if ok {
		return im.Path(src.SHA256), info, nil
	}
	return im.join(ctx, src, loc)
}

// existing returns the Info of the published image for sha, if there is
// one. Only complete imports are ever published, so its existence is
// enough; opening it gives the virtual size.
func (im *Importer) existing(sha string) (Info, bool, error) {
	path := im.Path(sha)
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Info{}, false, nil
	} else if err != nil {
		return Info{}, false, err
	}
	if !st.Mode().IsRegular() {
		return Info{}, false, fmt.Errorf("golden image %s is not a regular file", path)
	}
	img, err := qcow2.Open(path, qcow2.Options{ReadOnly: true, NoAutoRepair: true, Backing: qcow2.BackingPolicy{Standalone: true}})
	if err != nil {
		return Info{}, false, fmt.Errorf("golden image %s: %w", path, err)
	}
	defer img.Close()
	return Info{VirtualSize: img.Size(), AllocatedBytes: img.Info().ActualSize, Reused: true}, true, nil
}
