package driver

import (
	"errors"
	"os/exec"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"
)

// A staged filesystem can be smaller than its device: a restore or a
// clone into a claim larger than its source gets an overlay of the
// claim's size holding the source's filesystem. Kubernetes sends no
// NodeExpandVolume for that (the claim was never resized), so the stage
// grows it, as it would be grown had the source itself been expanded.
// Growth only adds space at the end; what the filesystem holds is not
// moved, and a filesystem that fills its device is left alone.

// isExt says whether format is one resize2fs grows.
func isExt(format string) bool { return format == "ext3" || format == "ext4" }

// growBeforeMount grows an ext filesystem on dev, unmounted, when it is
// smaller than dev and this process cannot grow it mounted (EXT4's online
// resize needs CAP_SYS_RESOURCE; CanGrowExt4Online). The filesystem is
// checked first, as resize2fs requires: `e2fsck -f -p` replays the
// journal (which the mount would do) and repairs only what is safe
// without a question; anything else refuses the stage.
func (d *Driver) growBeforeMount(s *staged) error {
	if s.readOnly {
		return nil
	}
	if ok, err := CanGrowExt4Online(); err != nil || ok {
		return nil // grown mounted by growAfterMount (or not at all: unknown)
	}
	format, err := d.formatter().GetDiskFormat(s.device())
	if err != nil || !isExt(format) {
		return nil // FormatAndMount reports what it finds wrong
	}
	small, err := extSmallerThanDevice(s.device())
	if err != nil || !small {
		return err
	}
	if out, err := exec.Command("e2fsck", "-f", "-p", s.device()).CombinedOutput(); err != nil {
		// Exit status 1: errors were corrected; the filesystem is fine now.
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			return status.Errorf(codes.Internal, "checking %s before growing it: %v: %s", s.device(), err, strings.TrimSpace(string(out)))
		}
	}
	if out, err := exec.Command("resize2fs", s.device()).CombinedOutput(); err != nil {
		return status.Errorf(codes.Internal, "growing the filesystem on %s: %v: %s", s.device(), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// growAfterMount grows the mounted filesystem at s.path to its device
// where that can be done mounted: xfs always, ext with CAP_SYS_RESOURCE.
// xfs_growfs and resize2fs each do nothing to a filesystem that fills its
// device.
func (d *Driver) growAfterMount(s *staged) error {
	if s.readOnly {
		return nil
	}
	format, err := d.formatter().GetDiskFormat(s.device())
	if err != nil {
		return status.Errorf(codes.Internal, "reading the filesystem type of %s: %v", s.device(), err)
	}
	if isExt(format) {
		if ok, _ := CanGrowExt4Online(); !ok {
			return nil // grown before the mount (growBeforeMount)
		}
	} else if format != "xfs" {
		return nil
	}
	if _, err := mount.NewResizeFs(utilexec.New()).Resize(s.device(), s.path); err != nil {
		return status.Errorf(codes.Internal, "growing the filesystem on %s: %v", s.device(), err)
	}
	return nil
}

// extSmallerThanDevice compares an ext filesystem's size (its superblock,
// through dumpe2fs) with its device's by at least one block.
func extSmallerThanDevice(dev string) (bool, error) {
	out, err := exec.Command("dumpe2fs", "-h", dev).Output()
	if err != nil {
		return false, status.Errorf(codes.Internal, "reading the superblock of %s: %v", dev, err)
	}
	var blocks, blockSize uint64
	for line := range strings.Lines(string(out)) {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "Block count":
			blocks, err = strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		case "Block size":
			blockSize, err = strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		}
		if err != nil {
			return false, status.Errorf(codes.Internal, "dumpe2fs %s: %q: %v", dev, line, err)
		}
	}
	if blocks == 0 || blockSize == 0 {
		return false, status.Errorf(codes.Internal, "dumpe2fs %s gave no block count or size", dev)
	}
	size, err := deviceSize(dev)
	if err != nil {
		return false, status.Errorf(codes.Internal, "size of %s: %v", dev, err)
	}
	return uint64(size) >= (blocks+1)*blockSize, nil
}
