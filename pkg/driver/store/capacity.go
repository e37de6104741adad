package store

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// Usage is what the store holds and what its filesystem has left.
type Usage struct {
	FreeBytes      int64 // free bytes of the store's filesystem
	AllocatedBytes int64 // bytes the store's layer and image files occupy
	VirtualBytes   int64 // the sum of the volumes' sizes
	Volumes        int
	LayerFiles     int
}

// Usage measures the store.
func (s *Store) Usage() (Usage, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(s.lay.root, &st); err != nil {
		return Usage{}, fmt.Errorf("statfs %s: %w", s.lay.root, err)
	}
	u := Usage{FreeBytes: int64(st.Bavail) * st.Bsize}
	for _, dir := range []string{layersDir, imagesDir} {
		ents, err := os.ReadDir(s.lay.dir(dir))
		if err != nil {
			return Usage{}, err
		}
		for _, e := range ents {
			if info, err := e.Info(); err == nil {
				u.AllocatedBytes += allocatedBytes(info)
			}
			if dir == layersDir && layerOfFile(e.Name()) != "" && filepath.Ext(e.Name()) == ".qcow2" {
				u.LayerFiles++
			}
		}
	}
	s.mu.Lock()
	for _, v := range s.volumes {
		u.VirtualBytes += v.Capacity
		u.Volumes++
	}
	s.mu.Unlock()
	return u, nil
}

// Available is the size of the largest volume the store promises to
// hold at overcommit ratio r (virtual bytes per physical byte): r times
// the physical bytes volumes can use (free plus what they already
// occupy), less every volume's size. At r = 1 that is the free space
// minus what the existing volumes may still write, so that no promise
// is made twice.
func (u Usage) Available(r float64) int64 {
	physical := float64(u.FreeBytes + u.AllocatedBytes)
	avail := int64(r*physical) - u.VirtualBytes
	return max(0, min(avail, int64(r*float64(u.FreeBytes))))
}

func allocatedBytes(info os.FileInfo) int64 {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return info.Size()
}
