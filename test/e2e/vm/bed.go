package vm

import (
	"embed"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

//go:embed guest
var guestFiles embed.FS

// guestModules are the modules the guest loads, dependencies first.
// crc32c_generic is a soft dependency of ext4 and libcrc32c (xfs): the
// .modinfo "depends" list does not name it.
var guestModules = []string{"crc32c_generic", "nbd", "ext4", "xfs"}

// guestTools are host programs copied into the guest's /usr/sbin with their
// libraries. Debian's busybox shell runs its own applets before anything on
// PATH, so scripts call these by their full path (lib.sh names them).
// The driver's node service (mount-utils) runs the rest: blkid to find a
// filesystem, fsck before a mount, mkfs.ext4, and the online growers.
var guestTools = []string{"mke2fs", "e2fsck", "mkfs.xfs", "blkdiscard",
	"mkfs.ext4", "blkid", "fsck", "fsck.ext4", "resize2fs", "xfs_growfs", "fstrim"}

// TestNames lists the guest test scripts ("00-boot", ...) in run order.
func TestNames() ([]string, error) {
	entries, err := fs.ReadDir(guestFiles, "guest/tests")
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".sh") {
			names = append(names, strings.TrimSuffix(e.Name(), ".sh"))
		}
	}
	sort.Strings(names)
	return names, nil
}

// guestTestBinaries are Go test binaries built into the guest's /usr/bin
// as NAME.test: nbdattach's TestKernel* tests need the kernel's nbd
// driver and run there (48-resize); the driver's node tests and
// csi-sanity run there on kernel NBD (50-driver) as on the host on FUSE.
var guestTestBinaries = map[string]string{"nbdattach": "./pkg/nbdattach", "driver": "./pkg/driver"}

// BuildInitramfs stages and packs the guest root filesystem into out:
// busybox, the static csi-qcow2 and test binaries (built from moduleRoot),
// the tools, the kernel's modules and the guest scripts.
func BuildInitramfs(k Kernel, moduleRoot, stageDir, out string) error {
	r := &Initramfs{Dir: stageDir}
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		return err
	}
	// AddProgram: a dynamically linked busybox (Debian's "busybox" rather
	// than "busybox-static") brings its libraries along.
	if err := r.AddProgram(busybox, "/bin/busybox"); err != nil {
		return err
	}
	if err := buildStatic(moduleRoot, filepath.Join(stageDir, "usr/bin/csi-qcow2"), "build", "./cmd/csi-qcow2"); err != nil {
		return err
	}
	for name, pkg := range guestTestBinaries {
		if err := buildStatic(moduleRoot, filepath.Join(stageDir, "usr/bin", name+".test"), "test", "-c", pkg); err != nil {
			return err
		}
	}
	for _, tool := range guestTools {
		p, err := exec.LookPath(tool)
		if err != nil {
			return err
		}
		if err := r.AddProgram(p, "/usr/sbin/"+tool); err != nil {
			return err
		}
	}
	if err := addModules(r, k); err != nil {
		return err
	}
	if err := addGuestScripts(r); err != nil {
		return err
	}
	return r.Pack(out)
}

// buildStatic runs "go build" or "go test -c" (args name the package)
// without cgo: a static binary that runs on the guest's bare busybox
// userland.
func buildStatic(moduleRoot, out string, args ...string) error {
	cmd := exec.Command("go", append([]string{args[0], "-trimpath", "-o", out}, args[1:]...)...)
	cmd.Dir = moduleRoot
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	return nil
}

func addModules(r *Initramfs, k Kernel) error {
	builtinList, err := os.ReadFile(filepath.Join(k.ModulesDir(), "..", "modules.builtin"))
	if err != nil {
		return err
	}
	order, err := ModuleLoadOrder(k.ModulesDir(), builtinModules(builtinList), guestModules...)
	if err != nil {
		return err
	}
	var list strings.Builder
	for _, p := range order {
		name := filepath.Base(p)
		if err := r.AddFile(p, "/modules/"+name, 0o644); err != nil {
			return err
		}
		list.WriteString(name + "\n")
	}
	return r.AddBytes([]byte(list.String()), "/modules/order", 0o644)
}

func addGuestScripts(r *Initramfs) error {
	copies := map[string]string{"guest/init": "/init", "guest/lib.sh": "/lib/vmtest.sh"}
	names, err := TestNames()
	if err != nil {
		return err
	}
	for _, n := range names {
		copies[path.Join("guest/tests", n+".sh")] = "/tests/" + n + ".sh"
	}
	for src, dst := range copies {
		b, err := guestFiles.ReadFile(src)
		if err != nil {
			return err
		}
		if err := r.AddBytes(b, dst, 0o755); err != nil {
			return err
		}
	}
	return nil
}
