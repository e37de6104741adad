package external

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"github.com/csi-qcow2/csi-qcow2/test/e2e/imagepack"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// The images the storage suite's pods run, under the references e2e.test
// v1.37.2 gives them (test/utils/image/manifest.go). The cluster pulls
// nothing, so these are built here and imported; the framework's pods use
// imagePullPolicy IfNotPresent and find them.
const (
	// BusyboxImage is the default test image (e2epod.GetDefaultTestImage):
	// Debian's static busybox with every applet linked in /bin.
	BusyboxImage = "registry.k8s.io/e2e-test-images/busybox:1.37.0-2"
	// AgnhostImage is agnhost (subPath's mounttest containers) over the
	// busybox tree: entrypoint /agnhost, command pause, as upstream.
	AgnhostImage = "registry.k8s.io/e2e-test-images/agnhost:2.66.1"
	// NginxImage is a stand-in: the volumes suite's exec test only runs
	// /bin/sh -c in it, so it is the busybox image under nginx's name.
	NginxImage = "registry.k8s.io/e2e-test-images/nginx:1.27.0-2"
	// GlibcDNSTestingImage is a stand-in too: multiVolume's concurrent
	// access pods run /bin/sh -c with GNU dd (oflag=nocache, which
	// busybox lacks) and sha256sum: the busybox image with Debian's
	// coreutils (and the libraries it needs) over it.
	GlibcDNSTestingImage = "registry.k8s.io/e2e-test-images/glibc-dns-testing:2.1.1"
	// PauseImage is agnhost pause (the storage suites do not use it; the
	// cluster's pod sandbox is its own image).
	PauseImage = "registry.k8s.io/pause:3.10.2"
)

// CoreutilsPackages are the Debian packages of the GNU coreutils layer:
// coreutils, dash as /bin/sh (busybox's sh runs its own dd applet before
// any dd on PATH), and what they link.
var CoreutilsPackages = []string{"coreutils", "dash", "libc6", "libgcc-s1", "libacl1", "libattr1", "libgmp10", "libselinux1", "libpcre2-8-0"}

// BuildImages writes every image above into one docker-archive tarball
// at out (layers shared), from a static busybox, the agnhost binary
// (build-e2e-test.sh builds it) and a tree of CoreutilsPackages
// (DebianPackages makes it).
func BuildImages(ctx context.Context, busybox, agnhost, coreutils, out string) error {
	applets, err := exec.CommandContext(ctx, busybox, "--list").Output()
	if err != nil {
		return fmt.Errorf("%s --list: %v", busybox, err)
	}
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return err
	}
	files := []imagepack.File{
		{Name: "bin/", Mode: 0o755},
		{Name: "bin/busybox", Mode: 0o755, Data: bb},
		{Name: "etc/", Mode: 0o755},
		{Name: "etc/passwd", Mode: 0o644, Data: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")},
		{Name: "etc/group", Mode: 0o644, Data: []byte("root:x:0:\nnogroup:x:65534:\n")},
		{Name: "root/", Mode: 0o700},
		{Name: "tmp/", Mode: 0o1777},
	}
	for _, a := range strings.Fields(string(applets)) {
		if a != "busybox" {
			files = append(files, imagepack.File{Name: "bin/" + a, Link: "busybox"})
		}
	}
	base, err := imagepack.Layer(files)
	if err != nil {
		return err
	}
	ag, err := os.ReadFile(agnhost)
	if err != nil {
		return err
	}
	agLayer, err := imagepack.Layer([]imagepack.File{{Name: "agnhost", Mode: 0o755, Data: ag}})
	if err != nil {
		return err
	}
	path := v1.Config{Env: []string{"PATH=/bin"}}
	bbImg, err := imagepack.Image(path, nil, []string{"sh"}, base)
	if err != nil {
		return err
	}
	gnuFiles, err := imagepack.TreeFiles(coreutils)
	if err != nil {
		return err
	}
	gnuLayer, err := imagepack.Layer(gnuFiles)
	if err != nil {
		return err
	}
	// GNU's dd, sha256sum, ... replace busybox's links in /bin.
	glibcImg, err := imagepack.Image(v1.Config{Env: []string{"PATH=/usr/bin:/bin"}}, nil, []string{"sh"}, base, gnuLayer)
	if err != nil {
		return err
	}
	agImg, err := imagepack.Image(path, []string{"/agnhost"}, []string{"pause"}, base, agLayer)
	if err != nil {
		return err
	}
	pause, err := imagepack.Image(path, []string{"/agnhost", "pause"}, nil, base, agLayer)
	if err != nil {
		return err
	}
	refs := map[name.Reference]v1.Image{}
	for ref, img := range map[string]v1.Image{
		BusyboxImage: bbImg, NginxImage: bbImg, GlibcDNSTestingImage: glibcImg,
		AgnhostImage: agImg, PauseImage: pause,
	} {
		tag, err := name.NewTag(ref)
		if err != nil {
			return err
		}
		refs[tag] = img
	}
	tmp := out + ".tmp"
	if err := tarball.MultiRefWriteToFile(tmp, refs); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, out)
}

// BuildImagesFromDebian is BuildImages with busybox and coreutils from
// Debian's packages, fetched once into cache.
func BuildImagesFromDebian(ctx context.Context, cache, agnhost, out string) error {
	busybox, err := DebianBusybox(ctx, cache)
	if err != nil {
		return err
	}
	coreutils, err := DebianPackages(ctx, cache, CoreutilsPackages...)
	if err != nil {
		return err
	}
	return BuildImages(ctx, busybox, agnhost, coreutils, out)
}

// ImageRefs lists the references BuildImages writes, sorted.
func ImageRefs() []string {
	r := []string{BusyboxImage, AgnhostImage, NginxImage, GlibcDNSTestingImage, PauseImage}
	sort.Strings(r)
	return r
}

// DebianBusybox returns a static busybox: Debian's busybox-static package,
// fetched with apt-get download into dir (once) and unpacked there.
func DebianBusybox(ctx context.Context, dir string) (string, error) {
	tree, err := DebianPackages(ctx, dir, "busybox-static")
	if err != nil {
		return "", err
	}
	return filepath.Join(tree, "bin", "busybox"), nil
}

// DebianPackages fetches the packages with apt-get download into dir
// (once) and unpacks them into one tree there, which it returns.
func DebianPackages(ctx context.Context, dir string, pkgs ...string) (string, error) {
	tree := filepath.Join(dir, "tree-"+strings.Join(pkgs, "+"))
	if _, err := os.Stat(filepath.Join(tree, ".done")); err == nil {
		return tree, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	var debs []string
	for _, p := range pkgs {
		m, _ := filepath.Glob(filepath.Join(dir, p+"_*.deb"))
		if len(m) == 0 {
			cmd := exec.CommandContext(ctx, "apt-get", "download", p)
			cmd.Dir = dir
			if out, err := cmd.CombinedOutput(); err != nil {
				return "", fmt.Errorf("apt-get download %s: %v: %s", p, err, out)
			}
			if m, _ = filepath.Glob(filepath.Join(dir, p+"_*.deb")); len(m) == 0 {
				return "", fmt.Errorf("apt-get download left no %s_*.deb in %s", p, dir)
			}
		}
		debs = append(debs, m[0])
	}
	os.RemoveAll(tree)
	for _, deb := range debs {
		if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", deb, tree).CombinedOutput(); err != nil {
			return "", fmt.Errorf("dpkg-deb -x %s: %v: %s", deb, err, out)
		}
	}
	// Documentation is no part of an image.
	os.RemoveAll(filepath.Join(tree, "usr", "share"))
	if err := os.WriteFile(filepath.Join(tree, ".done"), nil, 0o644); err != nil {
		return "", err
	}
	return tree, nil
}
