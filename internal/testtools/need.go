// Package testtools gates tests on external programs (qemu-img, qemu-io, ...)
// and on root, bounds their waits for things that happen (WaitFor, Within),
// and mounts filesystems that run out of space on demand (ThinFS).
// Locally a missing tool skips the test with the install command to run; in
// CI (CI=true) it fails the test, so a green run never hides a skipped layer.
// It imports no package of this module but the leaf internal/loopdev.
package testtools

import (
	"os"
	"os/exec"
	"testing"
)

// debianPackage names the package that provides each tool we call.
var debianPackage = map[string]string{
	"qemu-img":           "qemu-utils",
	"qemu-io":            "qemu-utils",
	"qemu-nbd":           "qemu-utils",
	"qemu-system-x86_64": "qemu-system-x86",
	"nbdinfo":            "libnbd-bin",
	"nbdcopy":            "libnbd-bin",
	"fio":                "fio",
	"busybox":            "busybox-static",
	"cpio":               "cpio",
	"xz":                 "xz-utils",
	"mke2fs":             "e2fsprogs",
	"mkfs.ext4":          "e2fsprogs",
	"e2fsck":             "e2fsprogs",
	"mkfs.xfs":           "xfsprogs",
	"blkdiscard":         "util-linux",
	"fstrim":             "util-linux",
	"blockdev":           "util-linux",
	"mount":              "mount",
	"umount":             "mount",
	"losetup":            "mount",
	"apt-get":            "apt",
	"apt-cache":          "apt",
	"dpkg-deb":           "dpkg",
	"dd":                 "coreutils",
	"sync":               "coreutils",
}

// InCI reports whether the tests run under CI (CI=true).
func InCI() bool { return os.Getenv("CI") == "true" }

// Need returns the paths of the named programs, or stops the test: Fatal in
// CI, Skip elsewhere.
func Need(t testing.TB, tools ...string) []string {
	t.Helper()
	paths := make([]string, len(tools))
	for i, name := range tools {
		p, err := exec.LookPath(name)
		if err != nil {
			stop(t, name+" not found on PATH; install it with: apt-get install -y "+pkgFor(name)+" (make test does this)")
		}
		paths[i] = p
	}
	return paths
}

// NeedRoot stops the test unless it runs as root (mounts, loop devices),
// by the same rule as Need: Fatal in CI, Skip elsewhere.
func NeedRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		stop(t, "needs root (it mounts filesystems and binds loop devices)")
	}
}

// stop ends a test that lacks something it needs: a failure in CI, a skip
// elsewhere.
func stop(t testing.TB, msg string) {
	t.Helper()
	if InCI() {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

func pkgFor(tool string) string {
	if p, ok := debianPackage[tool]; ok {
		return p
	}
	return tool
}
