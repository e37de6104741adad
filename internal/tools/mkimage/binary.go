package main

import (
	"archive/tar"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"time"
)

// binaryPath is where the image holds the driver binary, and its entrypoint.
const binaryPath = "/usr/bin/csi-qcow2"

// elfArch maps an ELF machine to the image platform's architecture: the
// image's platform is the binary's, so a cross-built binary is never
// labelled with the host's architecture.
var elfArch = map[elf.Machine]string{
	elf.EM_X86_64:  "amd64",
	elf.EM_AARCH64: "arm64",
	elf.EM_386:     "386",
	elf.EM_ARM:     "arm",
	elf.EM_PPC64:   "ppc64le",
	elf.EM_S390:    "s390x",
	elf.EM_RISCV:   "riscv64",
}

// staticArch checks that the file at path is a static ELF executable (no
// PT_INTERP, so no dynamic loader, and no DT_NEEDED libraries) and returns
// its architecture. The image does hold a glibc, for the Debian tools, but
// a driver linked against the build host's libc could fail on the image's;
// CGO_ENABLED=0 is what keeps it static, and this is where a build that
// lost it is caught.
func staticArch(path string) (string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return "", fmt.Errorf("binary %s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return "", fmt.Errorf("binary %s is dynamically linked (PT_INTERP); build it with CGO_ENABLED=0", path)
		}
	}
	if libs, err := f.ImportedLibraries(); err == nil && len(libs) > 0 {
		return "", fmt.Errorf("binary %s needs shared libraries %v; build it with CGO_ENABLED=0", path, libs)
	}
	arch, ok := elfArch[f.Machine]
	if !ok {
		return "", fmt.Errorf("binary %s: unsupported machine %v", path, f.Machine)
	}
	return arch, nil
}

// writeBinary writes a tar stream that holds the binary at binaryPath and
// its parent directories, with the same owner and modes as the package
// root gives them (root, 0755), so this layer changes nothing else.
func writeBinary(w io.Writer, path string, epoch time.Time) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(w)
	for _, dir := range []string{"usr/", "usr/bin/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return err
		}
	}
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: binaryPath[1:], Mode: 0o755, Size: fi.Size(), ModTime: epoch, Format: tar.FormatPAX}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	if err := copyFile(tw, path, fi.Size()); err != nil {
		return err
	}
	return tw.Close()
}
