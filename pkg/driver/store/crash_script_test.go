package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"strings"
)

// call is one step of the kill -9 test's workload: a store operation
// and, for volumes, the write that gives them their content. Replaying a
// call after a crash must complete it.
type call struct {
	Op   string // create, snapshot, clone, restore, write, write-snapshot, expand, delete-volume, delete-snapshot
	Name string
	Src  string // a volume or snapshot name
	Type string // snapshot type
	Off  int64  // write, write-snapshot: where the write goes
	Len  int64  // write, write-snapshot: how much it writes; expand: the new size
}

const (
	crashVolSize = 8 << 20
	patternLen   = 64 << 10
)

// pattern is the content the volume called root is given at offset 0:
// everything made from it reads the same there.
func pattern(root string) []byte {
	sum := sha256.Sum256([]byte(root))
	return bytes.Repeat(sum[:], patternLen/len(sum))
}

// rootOf names the volume whose content an object carries: names are
// <kind>-<root>[-...], roots are vol<run>.
func rootOf(name string) string {
	for _, part := range strings.Split(name, "-") {
		if strings.HasPrefix(part, "vol") {
			return part
		}
	}
	return ""
}

// script is run r's workload: it deletes every object of runs before r-1
// that s still holds (earlier runs may have been killed before their
// deletes), then makes a volume with content, snapshots of both types, a
// clone, restores from both snapshots (from internal ones both ways of
// making their layer), and enough frozen layers to pass the chain cap (a
// merge).
func script(r int, s *Store) []call {
	old := func(name string) bool {
		var k int
		_, err := fmt.Sscanf(rootOf(name), "vol%d", &k)
		return err == nil && k <= r-2
	}
	// Deletes first, so that most runs reach them before their kill.
	// Volumes before snapshots, so that snapshots outlive their volumes
	// for a while.
	var calls []call
	for _, v := range s.ListVolumes() {
		if old(v.Name) {
			calls = append(calls, call{Op: "delete-volume", Name: v.Name})
		}
	}
	for _, sn := range s.ListSnapshots() {
		if old(sn.Name) {
			calls = append(calls, call{Op: "delete-snapshot", Name: sn.Name})
		}
	}
	vol := fmt.Sprintf("vol%d", r)
	calls = append(calls,
		call{Op: "create", Name: vol},
		call{Op: "snapshot", Name: "se-" + vol, Src: vol, Type: TypeExternal},
		// si holds 2 MiB of its own (the external snapshot took the rest
		// away), and more is written after it: its restore copies what
		// it holds (materialize).
		call{Op: "write-snapshot", Name: "si-" + vol, Src: vol, Type: TypeInternal, Off: 5 << 20, Len: 2 << 20},
		call{Op: "write", Src: vol, Off: 1 << 20, Len: 3 << 20},
		// sj holds all of that, and less is written after it: its restore
		// freezes the volume's top and copies the difference.
		call{Op: "write-snapshot", Name: "sj-" + vol, Src: vol, Type: TypeInternal, Off: 7 << 20, Len: 64 << 10},
		call{Op: "write", Src: vol, Off: 5 << 20, Len: 512 << 10},
		call{Op: "restore", Name: "rj-" + vol, Src: "sj-" + vol},
		call{Op: "clone", Name: "cl-" + vol, Src: vol},
		call{Op: "restore", Name: "re-" + vol, Src: "se-" + vol},
		call{Op: "restore", Name: "ri-" + vol, Src: "si-" + vol},
	)
	for k := range 3 {
		calls = append(calls, call{Op: "write-snapshot", Name: fmt.Sprintf("sx%d-%s", k, vol), Src: vol, Type: TypeExternal, Off: int64(1+k) << 20, Len: 256 << 10})
	}
	return append(calls, call{Op: "expand", Name: vol, Len: 2 * crashVolSize})
}

// do runs c against s; err is nil when c is done.
func (c call) do(s *Store) error {
	ctx := context.Background()
	switch c.Op {
	case "create":
		v, err := s.CreateVolume(ctx, VolumeSpec{Name: c.Name, Capacity: crashVolSize})
		if err != nil {
			return err
		}
		return writeThrough(s, v.ID, pattern(rootOf(c.Name)), 0)
	case "snapshot":
		_, err := s.CreateSnapshot(ctx, SnapshotSpec{Name: c.Name, Volume: s.VolumeID(c.Src), Type: c.Type})
		return err
	case "clone":
		_, err := s.CreateVolume(ctx, VolumeSpec{Name: c.Name, Source: &Source{Kind: SourceVolume, ID: s.VolumeID(c.Src)}})
		return err
	case "restore":
		_, err := s.CreateVolume(ctx, VolumeSpec{Name: c.Name, Source: &Source{Kind: SourceSnapshot, ID: s.SnapshotID(c.Src)}})
		return err
	case "write":
		return writeThrough(s, s.VolumeID(c.Src), bytes.Repeat([]byte{0x3c}, int(c.Len)), c.Off)
	case "write-snapshot":
		if err := writeThrough(s, s.VolumeID(c.Src), bytes.Repeat([]byte{0xa5}, int(c.Len)), c.Off); err != nil {
			return err
		}
		_, err := s.CreateSnapshot(ctx, SnapshotSpec{Name: c.Name, Volume: s.VolumeID(c.Src), Type: c.Type})
		return err
	case "expand":
		_, err := s.ExpandVolume(s.VolumeID(c.Name), c.Len)
		return err
	case "delete-volume":
		return s.DeleteVolume(s.VolumeID(c.Name))
	case "delete-snapshot":
		return s.DeleteSnapshot(s.SnapshotID(c.Name))
	}
	return fmt.Errorf("unknown call %q", c.Op)
}

// writeThrough writes p at off through a served handle and flushes it.
func writeThrough(s *Store, id string, p []byte, off int64) error {
	l, release, err := s.Hold(id)
	if err != nil {
		return err
	}
	_, err = l.WriteAt(p, off)
	if err == nil {
		err = l.Flush()
	}
	if rerr := release(); err == nil {
		err = rerr
	}
	return err
}
