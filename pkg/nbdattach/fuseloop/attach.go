package fuseloop

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/csi-qcow2/csi-qcow2/pkg/nbdattach"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Options say where and how a backend is exported.
type Options struct {
	// Dir is the mount point of the FUSE file system; it is created if
	// missing and must not be in use.
	Dir string
	// Name is the file's name and the mount's source in
	// /proc/self/mountinfo, so it identifies the backend there.
	Name string
	// BlockSize is the loop device's logical block size: 512 or 4096
	// (0 means 512). The backend's size must be a multiple of it.
	BlockSize int
	// Logf receives warnings; nil discards them.
	Logf func(format string, args ...any)
}

// Attachment is one backend exported as a loop device. Its methods may be
// called from several goroutines.
type Attachment struct {
	b         nbdattach.Backend
	dir, path string
	blockSize int
	dev       string

	mu   sync.Mutex
	srv  *fuse.Server // nil once unmounted
	loop *os.File     // nil once the loop device was let go
	// writeBack is Detach's write-back failure, kept until a Detach
	// that completes returns it (a busy device makes Detach retry).
	writeBack error
}

// Attach mounts a FUSE file system at opts.Dir that serves one file,
// b.Size() bytes of b, and binds a loop device with direct I/O to it. On
// error nothing is left behind.
func Attach(b nbdattach.Backend, opts Options) (*Attachment, error) {
	if opts.BlockSize == 0 {
		opts.BlockSize = 512
	}
	if opts.BlockSize != 512 && opts.BlockSize != 4096 {
		return nil, fmt.Errorf("fuseloop: block size %d, want 512 or 4096", opts.BlockSize)
	}
	if opts.Name == "" || strings.ContainsAny(opts.Name, "/\x00") || opts.Name == "." || opts.Name == ".." {
		return nil, fmt.Errorf("fuseloop: bad file name %q", opts.Name)
	}
	if err := checkSize(b.Size(), opts.BlockSize); err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	// A second mount on top of a live one would hide it, and its
	// Detach would then take down the wrong one.
	if mountPoint(dir) {
		return nil, fmt.Errorf("fuseloop: %s is already a mount point", dir)
	}
	// This process now serves a block device: reclaim must not make it
	// wait for writeback to that device, which only it can complete.
	if err := nbdattach.SetIOFlusher(); err != nil && opts.Logf != nil {
		opts.Logf("warning: %v", err)
	}
	srv, _, err := mount(b, dir, opts.Name)
	if err != nil {
		return nil, err
	}
	a := &Attachment{b: b, dir: dir, path: filepath.Join(dir, opts.Name),
		blockSize: opts.BlockSize, srv: srv}
	a.dev, a.loop, err = bindLoop(a.path, opts.BlockSize, b.Caps().ReadOnly)
	if err != nil {
		return nil, errors.Join(err, a.Detach())
	}
	return a, nil
}

// mountPoint reports whether dir is the root of a mount other than its
// parent's (a bind mount of the same file system goes unnoticed).
func mountPoint(dir string) bool {
	var d, p unix.Stat_t
	if unix.Stat(dir, &d) != nil || unix.Stat(filepath.Dir(dir), &p) != nil {
		return false
	}
	return d.Dev != p.Dev
}

func checkSize(size int64, blockSize int) error {
	if size <= 0 || size%int64(blockSize) != 0 {
		return fmt.Errorf("fuseloop: backend size %d is not a positive multiple of the block size %d", size, blockSize)
	}
	return nil
}

// Device is the loop device's path, /dev/loopN.
func (a *Attachment) Device() string { return a.dev }

// File is the FUSE file the loop device is bound to.
func (a *Attachment) File() string { return a.path }
