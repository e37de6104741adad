#!/usr/bin/env bash
# Installs the external programs the tests call (Debian packages), and only
# the ones that are missing. Run by `make test`; safe to run again.
set -euo pipefail

need_pkgs=()
need() { # need PROGRAM PACKAGE
	command -v "$1" >/dev/null 2>&1 || need_pkgs+=("$2")
}
need qemu-img qemu-utils
# The VM test bed (test/e2e/vm): QEMU, the guest's userland and the tools
# copied into it. The kernel itself is fetched with apt-get download.
need qemu-system-x86_64 qemu-system-x86
need busybox busybox-static
need cpio cpio
need xz xz-utils
need mke2fs e2fsprogs # also mkfs.ext4, for testtools.MountThinFS
need mkfs.xfs xfsprogs
need blkdiscard util-linux
# pkg/nbdattach/fuseloop: a file system on the FUSE+loop device, and its
# benchmark's plain loop devices.
need fstrim util-linux
need blockdev util-linux
need mount mount
need losetup mount
# NBD interop (internal/qcow2nbd), the NBD benchmark, and reading
# persistent bitmaps through qemu-nbd -B (nbdinfo --map=qemu:dirty-bitmap:NAME).
need nbdinfo libnbd-bin
need fio fio
# make bench-nbd's second peer beside qemu-nbd: nbdkit's file plugin.
need nbdkit nbdkit
# The image build (internal/tools/mkimage's test, make image) needs apt-get,
# apt-cache and dpkg-deb, which every Debian system has, and fetches its
# own packages into ~/.cache/csi-qcow2-image/debs.
need dpkg-deb dpkg

if [ "${#need_pkgs[@]}" -eq 0 ]; then
	exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
	sudo="sudo"
fi
echo "install-test-tools: installing ${need_pkgs[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
