package vm

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

// Initramfs collects the files of the guest's root filesystem in a staging
// directory and packs them as a newc cpio archive.
type Initramfs struct {
	Dir string
}

// AddFile copies src to dst (a path inside the guest) with mode.
func (r *Initramfs) AddFile(src, dst string, mode fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	return r.writeFrom(in, dst, mode)
}

// AddBytes writes data to dst inside the guest.
func (r *Initramfs) AddBytes(data []byte, dst string, mode fs.FileMode) error {
	return r.writeFrom(bytes.NewReader(data), dst, mode)
}

func (r *Initramfs) writeFrom(in io.Reader, dst string, mode fs.FileMode) error {
	p := filepath.Join(r.Dir, dst)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	out, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// lddLib matches "libx.so.1 => /lib/.../libx.so.1 (0x...)" and the loader's
// "/lib64/ld-linux-x86-64.so.2 (0x...)".
var lddLib = regexp.MustCompile(`(?:=>\s*)?(/\S+)\s+\(0x[0-9a-f]+\)`)

// AddProgram copies a host program to dst in the guest with the shared
// libraries ldd lists for it (the guest has no other libc).
func (r *Initramfs) AddProgram(path, dst string) error {
	if err := r.AddFile(path, dst, 0o755); err != nil {
		return err
	}
	out, err := exec.Command("ldd", path).Output()
	if err != nil {
		// "not a dynamic executable": nothing more to copy.
		return nil
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		m := lddLib.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		lib := m[1]
		if _, err := os.Stat(filepath.Join(r.Dir, lib)); err == nil {
			continue
		}
		if err := r.AddFile(lib, lib, 0o755); err != nil {
			return fmt.Errorf("%s needs %s: %w", path, lib, err)
		}
	}
	return nil
}

// Pack writes the archive (uncompressed: the kernel unpacks it fastest that
// way, and it lives only in the test's temporary directory).
func (r *Initramfs) Pack(out string) error {
	var list bytes.Buffer
	err := filepath.WalkDir(r.Dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(r.Dir, p)
		list.WriteString(rel + "\n")
		return nil
	})
	if err != nil {
		return err
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	var stderr strings.Builder
	cmd := exec.Command("cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0")
	cmd.Dir = r.Dir
	cmd.Stdin = &list
	cmd.Stdout = f
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("cpio: %v: %s", err, stderr.String())
	}
	return f.Close()
}
