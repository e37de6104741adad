package vm

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Kernel is a Debian kernel package unpacked in the cache.
type Kernel struct {
	Package string // linux-image-6.1.0-56-amd64
	Release string // 6.1.0-56-amd64
	Root    string // where the package is unpacked
	Vmlinux string // the uncompressed kernel image
}

// ModulesDir is lib/modules/<release>/kernel inside the unpacked package.
func (k Kernel) ModulesDir() string {
	return filepath.Join(k.Root, "lib", "modules", k.Release, "kernel")
}

// FetchKernel returns the current Debian kernel image package unpacked under
// cacheDir, downloading (apt-get download) and unpacking (dpkg -x) it only
// when the cache lacks it. $CSI_QCOW2_VM_KERNEL_PKG names another package.
func FetchKernel(cacheDir string) (Kernel, error) {
	pkg := os.Getenv("CSI_QCOW2_VM_KERNEL_PKG")
	if pkg == "" {
		var err error
		if pkg, err = currentKernelPackage(); err != nil {
			return Kernel{}, err
		}
	}
	release, ok := strings.CutPrefix(pkg, "linux-image-")
	if !ok {
		return Kernel{}, fmt.Errorf("%q is not a linux-image package", pkg)
	}
	k := Kernel{Package: pkg, Release: release, Root: filepath.Join(cacheDir, pkg)}
	k.Vmlinux = filepath.Join(k.Root, "vmlinux")
	if _, err := os.Stat(k.Vmlinux); err == nil {
		return k, nil
	}
	deb, err := downloadDeb(cacheDir, pkg)
	if err != nil {
		return Kernel{}, err
	}
	// Unpack into a temporary directory and rename, so an interrupted run
	// never leaves a half-unpacked kernel that looks complete.
	tmp, err := os.MkdirTemp(cacheDir, pkg+".unpack-")
	if err != nil {
		return Kernel{}, err
	}
	defer os.RemoveAll(tmp)
	if out, err := exec.Command("dpkg", "-x", deb, tmp).CombinedOutput(); err != nil {
		return Kernel{}, fmt.Errorf("dpkg -x %s: %v\n%s", deb, err, out)
	}
	vmlinuz := filepath.Join(tmp, "boot", "vmlinuz-"+release)
	if err := decompressVmlinuz(vmlinuz, filepath.Join(tmp, "vmlinux")); err != nil {
		return Kernel{}, err
	}
	os.RemoveAll(k.Root)
	if err := os.Rename(tmp, k.Root); err != nil {
		return Kernel{}, err
	}
	return k, nil
}

// currentKernelPackage asks apt which image linux-image-amd64 depends on,
// refreshing the package lists once if apt knows nothing yet.
func currentKernelPackage() (string, error) {
	for attempt := 0; attempt < 2; attempt++ {
		out, _ := exec.Command("apt-cache", "depends", "linux-image-amd64").Output()
		for _, line := range strings.Split(string(out), "\n") {
			if dep, ok := strings.CutPrefix(strings.TrimSpace(line), "Depends: "); ok && strings.HasPrefix(dep, "linux-image-") {
				return dep, nil
			}
		}
		if attempt == 0 {
			if out, err := exec.Command("apt-get", "update", "-qq").CombinedOutput(); err != nil {
				return "", fmt.Errorf("apt-get update: %v\n%s", err, out)
			}
		}
	}
	return "", errors.New("apt-cache cannot tell which kernel linux-image-amd64 depends on")
}

// downloadDeb fetches pkg's .deb into cacheDir unless one is there already.
func downloadDeb(cacheDir, pkg string) (string, error) {
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", err
	}
	if debs, _ := filepath.Glob(filepath.Join(cacheDir, pkg+"_*.deb")); len(debs) > 0 {
		return debs[0], nil
	}
	cmd := exec.Command("apt-get", "download", "-q", pkg)
	cmd.Dir = cacheDir
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("apt-get download %s: %v\n%s", pkg, err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(cacheDir, pkg+"_*.deb"))
	if len(debs) == 0 {
		return "", fmt.Errorf("apt-get download %s left no .deb in %s", pkg, cacheDir)
	}
	return debs[0], nil
}

// xzMagic starts the xz stream inside a Debian bzImage.
var xzMagic = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}

// decompressVmlinuz cuts the xz stream out of a bzImage and decompresses
// it: QEMU boots the uncompressed ELF kernel directly (with qboot), which
// saves the guest's own decompression, slow under TCG.
func decompressVmlinuz(vmlinuz, out string) error {
	b, err := os.ReadFile(vmlinuz)
	if err != nil {
		return err
	}
	i := bytes.Index(b, xzMagic)
	if i < 0 {
		return fmt.Errorf("%s: no xz stream (kernel not xz-compressed?)", vmlinuz)
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	var stderr bytes.Buffer
	cmd := exec.Command("xz", "-dc", "--single-stream")
	cmd.Stdin = bytes.NewReader(b[i:])
	cmd.Stdout = f
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("xz -dc %s: %v: %s", vmlinuz, err, stderr.String())
	}
	return f.Close()
}
