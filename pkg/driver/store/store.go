package store

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/csi-qcow2/csi-qcow2/pkg/qcow2"
)

// DefaultMaxChainDepth caps the files of a volume's chain, top included.
const DefaultMaxChainDepth = 8

// Config says where the store lives and how it behaves.
type Config struct {
	// Root is the state directory (the driver's --state-dir).
	Root string
	// Node is this node's ID; object IDs carry it (ids.go).
	Node string
	// MaxChainDepth caps the files of a volume's chain, top included; a
	// freeze that goes past it merges frozen layers into the top
	// (collapse.go). 0 means DefaultMaxChainDepth; at least 2.
	MaxChainDepth int
	// ImportImage makes images/<sha256>.qcow2 from url, once; the driver
	// wires pkg/driver/golden here. Nil refuses image sources.
	ImportImage func(ctx context.Context, url, sha256 string) error
	// Logf, if set, hears what recovery and collection did.
	Logf func(format string, args ...any)
}

// Store is the node-local store. Its methods are safe for concurrent use:
// operations on different objects run in parallel, a second operation on
// an object already being changed fails with ErrBusy.
type Store struct {
	cfg   Config
	lay   layout
	tag   string
	locks idLocks
	ready atomic.Bool

	// mu guards the records in memory and every record write and file
	// collection, so that collection never sees a half-made reference.
	mu        sync.Mutex
	volumes   map[string]*volumeRecord
	snapshots map[string]*snapshotRecord
	held      map[string]*heldVolume
	faults    map[string]Condition // volume ID -> why it is unhealthy
	imageSize map[string]int64     // golden image sha256 -> virtual size
	making    map[string]bool      // layers being made that no record names yet
}

// Open opens (making it if needed) the store at cfg.Root, finishes or
// undoes what a crash interrupted, and collects leftovers.
func Open(cfg Config) (*Store, error) {
	if cfg.Root == "" || cfg.Node == "" {
		return nil, fmt.Errorf("store: a root directory and a node ID are needed")
	}
	root, err := filepath.Abs(cfg.Root)
	if err != nil {
		return nil, err
	}
	cfg.Root = root
	if cfg.MaxChainDepth == 0 {
		cfg.MaxChainDepth = DefaultMaxChainDepth
	}
	if cfg.MaxChainDepth < 2 {
		return nil, fmt.Errorf("store: the chain depth cap must be at least 2, not %d", cfg.MaxChainDepth)
	}
	s := &Store{
		cfg:       cfg,
		lay:       layout{root: cfg.Root},
		tag:       nodeTag(cfg.Node),
		volumes:   map[string]*volumeRecord{},
		snapshots: map[string]*snapshotRecord{},
		held:      map[string]*heldVolume{},
		faults:    map[string]Condition{},
		imageSize: map[string]int64{},
		making:    map[string]bool{},
	}
	if err := s.lay.make(); err != nil {
		return nil, err
	}
	if err := emptyDir(s.lay.dir(tmpDir)); err != nil {
		return nil, err
	}
	if err := s.load(); err != nil {
		return nil, err
	}
	if err := s.recover(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	err = s.collect()
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	s.ready.Store(true)
	return s, nil
}

// Ready reports whether Open has finished recovery.
func (s *Store) Ready() bool { return s != nil && s.ready.Load() }

// Root is the state directory.
func (s *Store) Root() string { return s.lay.root }

// ImagesDir is where golden images go (<sha256>.qcow2).
func (s *Store) ImagesDir() string { return s.lay.dir(imagesDir) }

// TmpDir is scratch space on the store's filesystem, emptied by Open.
func (s *Store) TmpDir() string { return s.lay.dir(tmpDir) }

// MaxChainDepth is the cap on a volume's chain, top included.
func (s *Store) MaxChainDepth() int { return s.cfg.MaxChainDepth }

// VolumeID is the ID of the volume the CO calls name on this node.
func (s *Store) VolumeID(name string) string { return objectID(volumeKind, name, s.tag) }

// SnapshotID is the ID of the snapshot the CO calls name on this node.
func (s *Store) SnapshotID(name string) string { return objectID(snapshotKind, name, s.tag) }

// checkID sorts an ID from a request: ErrNotFound for anything this
// driver did not make (or of the wrong kind), ErrOtherNode for another
// node's.
func (s *Store) checkID(id, kind string) error {
	p := parseID(id)
	if !p.ok || p.kind != kind {
		return errorf(ErrNotFound, "%q is not a csi-qcow2 %s ID", id, kindName(kind))
	}
	if p.tag != s.tag {
		return errorf(ErrOtherNode, "%s %s is on node %q, not this one", kindName(kind), id, p.tag)
	}
	return nil
}

func kindName(kind string) string {
	if kind == volumeKind {
		return "volume"
	}
	return "snapshot"
}

// files lists the paths of a chain's files, bottom first: the exact set
// a layer above it may open (qcow2.BackingPolicy.Exact).
func (s *Store) files(c Chain) []string {
	var out []string
	if c.Image != "" {
		out = append(out, s.lay.imagePath(c.Image))
	}
	for _, l := range c.Layers {
		out = append(out, s.lay.layerPath(l))
	}
	return out
}

// policy allows a layer above c exactly c's files.
func (s *Store) policy(c Chain) qcow2.BackingPolicy {
	return qcow2.BackingPolicy{Exact: true, Files: s.files(c)}
}

// sortedVolumes and sortedSnapshots list ready objects by ID, the order
// List pages through.
func (s *Store) sortedVolumes() []*volumeRecord {
	var out []*volumeRecord
	for _, v := range s.volumes {
		if v.State == stateReady {
			out = append(out, v)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (s *Store) sortedSnapshots() []*snapshotRecord {
	var out []*snapshotRecord
	for _, v := range s.snapshots {
		if v.State == stateReady {
			out = append(out, v)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (s *Store) logf(format string, args ...any) {
	if s.cfg.Logf != nil {
		s.cfg.Logf(format, args...)
	}
}
