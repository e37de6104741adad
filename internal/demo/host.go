package demo

import (
	"bufio"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/csi-qcow2/csi-qcow2/internal/loopdev"
)

// Block device majors of the two attach paths.
const (
	loopMajor = 7
	nbdMajor  = 43
)

// attachPath names the attach path of the block volume the demo
// published, from its device number.
func (r *run) attachPath() string {
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(r.root, "kubelet", "pods", "vol-block"), &st); err != nil {
		return "unknown"
	}
	switch unix.Major(st.Rdev) {
	case loopMajor:
		return "FUSE file under a loop device"
	case nbdMajor:
		return "kernel NBD"
	}
	return "device major " + strconv.Itoa(int(unix.Major(st.Rdev)))
}

// sweep takes down what is still mounted or bound under root (deepest
// mount first, then loop devices whose file is under root) and returns
// what it found: after a clean teardown, nothing.
func sweep(root string) []string {
	var found []string
	mounts := mountsUnder(root)
	slices.SortFunc(mounts, func(a, b string) int { return len(b) - len(a) })
	for _, mp := range mounts {
		found = append(found, "mount "+mp)
		unix.Unmount(mp, unix.MNT_DETACH)
	}
	devs, _ := filepath.Glob("/sys/block/loop*")
	for _, d := range devs {
		dev := "/dev/" + filepath.Base(d)
		if b := loopdev.Backing(dev); b != "" && strings.HasPrefix(b, root+"/") {
			found = append(found, dev+" on "+b)
			if f, err := os.Open(dev); err == nil {
				unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0)
				f.Close()
			}
		}
	}
	return found
}

// mountsUnder lists the mount points at or under root.
func mountsUnder(root string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == root || strings.HasPrefix(mp, root+"/") {
			out = append(out, mp)
		}
	}
	return out
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
