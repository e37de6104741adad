package driver

import (
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
	"k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"
)

// growStaged grows the mounted filesystem at s.path to its device when
// it is smaller: a restore or a clone into a claim larger than its source
// gets an overlay of the claim's size holding the source's filesystem,
// and Kubernetes sends no NodeExpandVolume for it (the claim was never
// resized). xfs_growfs and resize2fs each leave a filesystem that fills
// its device alone.
//
// Only mounted growth: xfs always; ext3/ext4 where the plugin has
// CAP_SYS_RESOURCE (CanGrowExt4Online), through the kernel's journalled
// online resize, which a crash or a snapshot in the middle leaves
// consistent. Unmounted resize2fs is not: cut short, it leaves a
// filesystem only a manual fsck repairs. Growth is best effort: the
// volume's data is whole at its old size, so a filesystem that cannot
// grow (no capability; ext3 past 2^32 blocks) is logged and mounted as it
// is, not refused. Read-only mounts are not touched.
func (d *Driver) growStaged(s *staged) {
	// The mount itself says whether it is read-only, however "ro" was
	// asked for (the access mode, a flag, "ro,noatime" in one option).
	var st unix.Statfs_t
	if s.readOnly || unix.Statfs(s.path, &st) != nil || st.Flags&unix.ST_RDONLY != 0 {
		return
	}
	dev := s.device()
	format, err := d.formatter().GetDiskFormat(dev)
	if err != nil {
		klog.InfoS("not growing the staged filesystem: its type is unknown", "device", dev, "err", err)
		return
	}
	switch {
	case format == "xfs":
	case format == "ext3" || format == "ext4":
		if ok, err := CanGrowExt4Online(); !ok {
			klog.InfoS("not growing an ext filesystem to its device at stage: online resize needs CAP_SYS_RESOURCE", "device", dev, "err", err)
			return
		}
	default:
		return
	}
	if err := resizeMounted(dev, s.path); err != nil {
		klog.ErrorS(err, "the staged filesystem could not grow to its device; mounted at its old size", "device", dev, "path", s.path)
	}
}

// resizeMounted grows the filesystem mounted at path on dev to dev's size
// (a variable: tests see whether it is called).
var resizeMounted = func(dev, path string) error {
	_, err := mount.NewResizeFs(utilexec.New()).Resize(dev, path)
	return err
}
