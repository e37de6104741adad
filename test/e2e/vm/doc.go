// Package vm is the real-kernel test bed: it fetches a Debian kernel
// package (cached), builds a busybox initramfs holding a static csi-qcow2,
// the nbd/ext4/xfs modules and the tools the guest scripts call, boots it
// under qemu-system-x86_64 with TCG, and turns the guest's PASS/FAIL lines
// into go test subtests. See docs/vm-testbed.md.
//
// It imports nothing from this module but internal/testtools: the guest
// runs the csi-qcow2 binary the way a node would.
package vm
