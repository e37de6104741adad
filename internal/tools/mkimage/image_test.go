package main

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
)

// TestBuildImage runs scripts/build-image.sh, the code path of `make
// image`, into a temporary archive, reads it back as an OCI layout,
// unpacks the image's layers into a root and runs the driver and every
// tool the node plugin calls inside that root (chroot), with the image's
// own PATH. The packages are fetched once into the script's cache
// (~/.cache/csi-qcow2-image/debs); after that the test takes about 15 s.
func TestBuildImage(t *testing.T) {
	testtools.NeedRoot(t) // chroot; dpkg-deb -x keeps the packages' owners
	paths := testtools.Need(t, "go", "apt-get", "apt-cache", "dpkg-deb")
	const version = "v0.0.0-imagetest"
	dir := t.TempDir()
	archive := filepath.Join(dir, "image.tar")
	cmd := exec.Command("../../../scripts/build-image.sh")
	cmd.Env = append(os.Environ(), "VERSION="+version, "OUT="+archive, "GO="+paths[0])
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build-image.sh: %v\n%s", err, out)
	}

	lp := filepath.Join(dir, "layout")
	untar(t, archive, lp)
	idx, err := layout.ImageIndexFromPath(lp)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 {
		t.Fatalf("index.json lists %d manifests, want 1", len(im.Manifests))
	}
	desc := im.Manifests[0]
	if got, want := desc.Annotations[annotationImageName], "localhost/csi-qcow2:"+version; got != want {
		t.Errorf("image name annotation %q, want %q (ctr import names the image by it)", got, want)
	}
	img, err := idx.Image(desc.Digest)
	if err != nil {
		t.Fatal(err)
	}
	env := checkConfig(t, img, version)

	root := filepath.Join(dir, "root")
	unpack(t, img, root)
	checkStatic(t, filepath.Join(root, binaryPath))

	out := runIn(t, root, env, binaryPath, "version")
	if !strings.HasPrefix(out, "csi-qcow2 "+version+" ") {
		t.Errorf("csi-qcow2 version in the image printed %q, want the version %s", out, version)
	}
	// Each tool the node plugin (mount-utils, the attach path) runs, by
	// name along the image's PATH, and what it prints when it works.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"mkfs.ext4", "-V"}, "mke2fs 1.47"},
		{[]string{"e2fsck", "-V"}, "e2fsck 1.47"},
		{[]string{"fsck.ext4", "-V"}, "e2fsck 1.47"},
		{[]string{"mkfs.xfs", "-V"}, "mkfs.xfs version 6"},
		{[]string{"xfs_growfs", "-V"}, "xfs_growfs version 6"},
		{[]string{"xfs_repair", "-V"}, "xfs_repair version 6"},
		{[]string{"blkid", "-V"}, "blkid from util-linux"},
		{[]string{"fsck", "--version"}, "fsck from util-linux"},
		{[]string{"fstrim", "--version"}, "fstrim from util-linux"},
		{[]string{"blockdev", "--version"}, "blockdev from util-linux"},
		{[]string{"mount", "--version"}, "mount from util-linux"},
		{[]string{"umount", "--version"}, "umount from util-linux"},
		{[]string{"modprobe", "--version"}, "kmod version"},
		// fsck -a runs fsck.xfs on an xfs volume: a shell script, so
		// /bin/sh must work; with -a on an existing path it exits 0.
		{[]string{"fsck.xfs", "-a", "/tmp"}, ""},
	} {
		out := runIn(t, root, env, lookIn(t, root, env, tc.args[0]), tc.args[1:]...)
		if !strings.Contains(out, tc.want) {
			t.Errorf("%s in the image printed %q, want %q", strings.Join(tc.args, " "), out, tc.want)
		}
	}
	// resize2fs has no version flag: without arguments it prints its
	// usage and exits 1, which still shows it loads and runs.
	c := inRoot(root, env, lookIn(t, root, env, "resize2fs"))
	out2, err := c.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out2), "resize2fs 1.47") {
		t.Errorf("resize2fs in the image: %v, %q; want its usage and exit status 1", err, out2)
	}
}

// checkConfig checks the image's config and returns its environment.
func checkConfig(t *testing.T, img v1.Image, version string) []string {
	t.Helper()
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	if strings.Join(c.Entrypoint, " ") != binaryPath || strings.Join(c.Cmd, " ") != "driver" {
		t.Errorf("entrypoint %q cmd %q, want [%s] [driver]", c.Entrypoint, c.Cmd, binaryPath)
	}
	if c.Labels["org.opencontainers.image.version"] != version || c.Labels["org.opencontainers.image.source"] == "" {
		t.Errorf("labels %v, want the version %s and a source", c.Labels, version)
	}
	if cf.OS != "linux" || cf.Architecture == "" {
		t.Errorf("platform %s/%s", cf.OS, cf.Architecture)
	}
	pathOK := false
	for _, e := range c.Env {
		if p, ok := strings.CutPrefix(e, "PATH="); ok {
			l := filepath.SplitList(p)
			pathOK = contains(l, "/usr/sbin") && contains(l, "/sbin")
		}
	}
	if !pathOK {
		t.Errorf("env %q: PATH must hold /usr/sbin and /sbin", c.Env)
	}
	return c.Env
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// checkStatic fails unless the file is an ELF executable without a
// program interpreter: a static binary, which needs nothing of the root.
func checkStatic(t *testing.T, p string) {
	t.Helper()
	f, err := elf.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			t.Errorf("%s has PT_INTERP: not a static binary", p)
		}
	}
}

// lookIn finds a program along env's PATH inside root, as a container's
// exec would, and returns its path inside root.
func lookIn(t *testing.T, root string, env []string, name string) string {
	t.Helper()
	for _, e := range env {
		p, ok := strings.CutPrefix(e, "PATH=")
		if !ok {
			continue
		}
		for _, d := range filepath.SplitList(p) {
			if isExecutableIn(root, path.Join(d, name)) {
				return path.Join(d, name)
			}
		}
	}
	t.Fatalf("%s: not found along the image's PATH", name)
	return ""
}

// isExecutableIn reports whether p, a path inside root, is an executable
// file once its symbolic links are followed inside root: /sbin/modprobe is
// a link to /bin/kmod, which must not be looked for on this host. The
// root's directories themselves are not links (it is not usr-merged).
func isExecutableIn(root, p string) bool {
	for range 40 { // as the kernel's limit on nested links
		fi, err := os.Lstat(filepath.Join(root, p))
		if err != nil {
			return false
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			return fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
		}
		target, err := os.Readlink(filepath.Join(root, p))
		if err != nil {
			return false
		}
		if !path.IsAbs(target) {
			target = path.Join(path.Dir(p), target)
		}
		p = target
	}
	return false
}

// inRoot is a command that runs prog (a path inside root) chrooted into
// root, with env only, as the container's process would.
func inRoot(root string, env []string, prog string, args ...string) *exec.Cmd {
	c := exec.Command(prog, args...)
	c.Env = env
	c.Dir = "/"
	c.SysProcAttr = &syscall.SysProcAttr{Chroot: root}
	return c
}

// runIn runs prog inside root and returns its output; a failure fails
// the test.
func runIn(t *testing.T, root string, env []string, prog string, args ...string) string {
	t.Helper()
	out, err := inRoot(root, env, prog, args...).CombinedOutput()
	if err != nil {
		t.Errorf("%s %s in the image: %v\n%s", prog, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// unpack writes the image's flattened file system (its layers applied in
// order, by the library) under dir.
func unpack(t *testing.T, img v1.Image, dir string) {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	extract(t, rc, dir)
}

// untar extracts the tar file at src under dir.
func untar(t *testing.T, src, dir string) {
	t.Helper()
	f, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	extract(t, f, dir)
}

// extract writes a tar stream under dir through an os.Root, so no entry
// can land outside it, with the owners and modes (setuid included) the
// stream gives.
func extract(t *testing.T, r io.Reader, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimSuffix(path.Clean(h.Name), "/")
		if d := path.Dir(name); d != "." {
			if err := root.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		switch h.Typeflag {
		case tar.TypeDir:
			err = root.MkdirAll(name, 0o755)
		case tar.TypeReg:
			err = writeEntry(root, name, tr)
		case tar.TypeSymlink:
			err = root.Symlink(h.Linkname, name)
		case tar.TypeLink:
			err = root.Link(h.Linkname, name)
		default:
			t.Fatalf("%s: unexpected tar entry type %c", h.Name, h.Typeflag)
		}
		if err != nil && !errors.Is(err, fs.ErrExist) {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeSymlink || h.Typeflag == tar.TypeLink {
			continue
		}
		if err := root.Lchown(name, h.Uid, h.Gid); err != nil {
			t.Fatal(err)
		}
		// After chown, which clears setuid bits.
		if err := root.Chmod(name, fs.FileMode(h.Mode).Perm()|modeBits(h.Mode)); err != nil {
			t.Fatal(err)
		}
	}
}

// modeBits turns tar's setuid, setgid and sticky bits into Go's.
func modeBits(m int64) fs.FileMode {
	var b fs.FileMode
	if m&0o4000 != 0 {
		b |= fs.ModeSetuid
	}
	if m&0o2000 != 0 {
		b |= fs.ModeSetgid
	}
	if m&0o1000 != 0 {
		b |= fs.ModeSticky
	}
	return b
}

func writeEntry(root *os.Root, name string, r io.Reader) error {
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, r)
	return errors.Join(err, f.Close())
}

// TestRefusesDynamicBinary checks that mkimage refuses a binary that needs
// a dynamic loader, before it writes anything: the image's entrypoint must
// not depend on the image's libc. /bin/true is dynamic on Debian.
func TestRefusesDynamicBinary(t *testing.T) {
	out := filepath.Join(t.TempDir(), "image.tar")
	var stderr bytes.Buffer
	err := run([]string{"-root", t.TempDir(), "-binary", "/bin/true", "-version", "v0", "-out", out}, &stderr)
	if err == nil || !strings.Contains(err.Error(), "dynamically linked") {
		t.Fatalf("mkimage with /bin/true: %v, want a refusal of a dynamic binary", err)
	}
	if _, serr := os.Stat(out); !errors.Is(serr, fs.ErrNotExist) {
		t.Errorf("an archive was written: %v", serr)
	}
}
