package driver

import (
	"fmt"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

// checkCapabilities refuses what a volume on one node's disk cannot be:
// shared between nodes. Block and mount access are both served; a mount
// names ext4, xfs or nothing (ext4).
func checkCapabilities(caps []*csi.VolumeCapability) error {
	if len(caps) == 0 {
		return invalid("volume_capabilities are missing")
	}
	for i, c := range caps {
		if err := checkCapability(c); err != nil {
			return invalid("volume_capabilities[%d]: %v", i, err)
		}
	}
	return nil
}

func checkCapability(c *csi.VolumeCapability) error {
	if c == nil {
		return fmt.Errorf("empty")
	}
	switch a := c.GetAccessType().(type) {
	case *csi.VolumeCapability_Block:
	case *csi.VolumeCapability_Mount:
		switch fs := a.Mount.GetFsType(); fs {
		case "", "ext4", "xfs":
		default:
			return fmt.Errorf("filesystem %q is not supported (ext4 or xfs)", fs)
		}
	default:
		return fmt.Errorf("access type is missing (block or mount)")
	}
	mode := c.GetAccessMode().GetMode()
	switch mode {
	case csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER:
		return nil
	case csi.VolumeCapability_AccessMode_UNKNOWN:
		return fmt.Errorf("access mode is missing")
	}
	return fmt.Errorf("access mode %s is not supported: a volume lives on one node's disk", mode)
}
