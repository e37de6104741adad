package nbdattach

import (
	"errors"
	"strings"
	"testing"
)

// Resize refuses what it cannot do before it asks the kernel, and a size
// the kernel did not apply is an error.
func TestAttachmentResizeChecks(t *testing.T) {
	root := fakeSysBlock(t, map[string]map[string]string{
		"nbd3": {"size": "2048\n", "pid": "1\n", "backend": "vol\n"},
	})
	a := &Attachment{Index: 3, Path: "/dev/nbd3", Netlink: true,
		opts: AttachOptions{BackendID: "vol", Size: 1 << 20, SysBlock: root}.withDefaults()}
	a.size.Store(1 << 20)
	if err := a.Resize(1 << 19); !errors.Is(err, ErrShrink) {
		t.Errorf("shrink: %v, want ErrShrink", err)
	}
	if err := a.Resize(1<<20 + 100); err == nil || !strings.Contains(err.Error(), "block size") {
		t.Errorf("unaligned: %v", err)
	}
	if err := a.Resize(1 << 20); err != nil {
		t.Errorf("the same size: %v", err)
	}
	if err := a.checkKernelSize(1 << 20); err != nil {
		t.Errorf("sysfs has the size: %v", err)
	}
	if err := a.checkKernelSize(2 << 20); err == nil || !strings.Contains(err.Error(), "kept /dev/nbd3 at 1048576 bytes") {
		t.Errorf("a size the kernel did not apply: %v", err)
	}
	a.stopping = true
	if err := a.Resize(2 << 20); err == nil {
		t.Error("resized a device being detached")
	}
}
