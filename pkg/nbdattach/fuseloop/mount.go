package fuseloop

import (
	"context"
	"fmt"
	"time"

	"github.com/csi-qcow2/csi-qcow2/pkg/nbdattach"
	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

const (
	// maxRequest is the largest read or write the kernel sends (FUSE's
	// own ceiling): the loop device's 1 MiB sequential I/O then reaches
	// the backend whole.
	maxRequest = 1 << 20
	// maxBackground bounds the asynchronous requests the kernel keeps in
	// flight (the loop device's direct I/O is asynchronous), and with
	// maxInflightBytes the memory the server holds for them.
	maxBackground    = 64
	maxInflightBytes = 96 << 20
)

// root is the mount's directory; it holds the file only.
type root struct {
	fs.Inode
	name string
	file *file
}

func (r *root) OnAdd(ctx context.Context) {
	ch := r.NewPersistentInode(ctx, r.file, fs.StableAttr{Mode: fuse.S_IFREG, Ino: 2})
	r.AddChild(r.name, ch, false)
}

// mount serves b as dir/name and returns once the kernel has the mount.
func mount(b nbdattach.Backend, dir, name string) (*fuse.Server, *file, error) {
	f := &file{b: b}
	// Attributes are never cached: the size changes under Resize, and a
	// GETATTR costs nothing.
	var zero time.Duration
	opts := &fs.Options{
		AttrTimeout:  &zero,
		EntryTimeout: &zero,
		MountOptions: fuse.MountOptions{
			FsName:                  name,
			Name:                    "csi-qcow2",
			DirectMountStrict:       true, // root: mount(2) itself, never fusermount
			DisableXAttrs:           true,
			MaxWrite:                maxRequest,
			MaxBackground:           maxBackground,
			MaxInflightRequestBytes: maxInflightBytes,
			// Without ASYNC_DIO the kernel sends a direct I/O request
			// of the loop device as one synchronous request at a
			// time per submitter; with it, loop's aio runs in parallel.
			ExtraCapabilities: fuse.CAP_ASYNC_DIO,
			// Read data is in memory already: splicing it through a
			// pipe gains nothing, and a 1 MiB read plus its header
			// does not fit the default pipe (go-fuse logs each one).
			DisableSplice: true,
		},
	}
	srv, err := fs.Mount(dir, &root{name: name, file: f}, opts)
	if err != nil {
		return nil, nil, fmt.Errorf("fuseloop: mount %s: %w", dir, err)
	}
	return srv, f, nil
}
