package driver

import (
	"errors"
	"fmt"
	"os"
	"os/exec"

	"github.com/csi-qcow2/csi-qcow2/pkg/nbdattach"
)

// Attach paths (--attach-path).
const (
	attachAuto = "auto" // kernel NBD where the node has it, else FUSE
	attachNBD  = "nbd"
	attachFUSE = "fuse"
	// attachNone makes no block devices: the instance serves Identity and
	// Controller for a central sidecar (the deployment's external-resizer)
	// and is never registered with a kubelet.
	attachNone = "none"
)

// attachPath makes staged volumes' block devices on one node.
type attachPath interface {
	name() string
	// attach serves b as a block device for volume id.
	attach(id string, b nbdattach.Backend) (device, error)
}

// device is a staged volume's block device.
type device interface {
	Path() string  // /dev/nbdN or /dev/loopN
	Resize() error // follow the backend after it grew
	Detach() error // take the device down (its users have let go)
}

// chooseAttachPath picks the attach path want names, or for "auto" the
// kernel's NBD driver when it answers on netlink (after a modprobe) and
// FUSE under a loop device otherwise; why says what decided.
func chooseAttachPath(want, stateDir string) (p attachPath, why string, err error) {
	switch want {
	case "", attachAuto:
		if err := nbdUsable(); err == nil {
			return nbdPath{}, "the kernel's nbd driver answers on netlink", nil
		} else if ferr := fuseUsable(); ferr == nil {
			return fusePath{stateDir}, fmt.Sprintf("no kernel NBD (%v)", err), nil
		} else {
			return nil, "", fmt.Errorf("no attach path on this node: kernel NBD: %v; FUSE: %v", err, ferr)
		}
	case attachNBD:
		if err := nbdUsable(); err != nil {
			return nil, "", fmt.Errorf("--attach-path=nbd: %w", err)
		}
		return nbdPath{}, "asked for", nil
	case attachFUSE:
		if err := fuseUsable(); err != nil {
			return nil, "", fmt.Errorf("--attach-path=fuse: %w", err)
		}
		return fusePath{stateDir}, "asked for", nil
	case attachNone:
		return nonePath{}, "asked for", nil
	}
	return nil, "", fmt.Errorf("attach path %q is none of auto, nbd, fuse, none", want)
}

// nbdUsable loads the nbd module if it is not (modprobe, where there is
// one) and checks that its netlink family answers.
func nbdUsable() error {
	err := nbdattach.Available()
	if !errors.Is(err, nbdattach.ErrNoNetlinkFamily) {
		return err
	}
	modprobe, lerr := exec.LookPath("modprobe")
	if lerr != nil {
		return err
	}
	if out, merr := exec.Command(modprobe, "nbd").CombinedOutput(); merr != nil {
		return fmt.Errorf("%w; modprobe nbd: %v: %s", err, merr, out)
	}
	return nbdattach.Available()
}

func fuseUsable() error {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return fmt.Errorf("no /dev/fuse: %w", err)
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		return fmt.Errorf("no /dev/loop-control: %w", err)
	}
	return nil
}

// nonePath refuses to attach: the driver runs where it has no devices
// (beside the central external-resizer, which only needs its capabilities).
type nonePath struct{}

func (nonePath) name() string { return attachNone }

func (nonePath) attach(id string, _ nbdattach.Backend) (device, error) {
	return nil, fmt.Errorf("this driver instance attaches nothing (--attach-path=none)")
}
