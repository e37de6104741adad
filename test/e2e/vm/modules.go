package vm

import (
	"bytes"
	"debug/elf"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
)

// moduleName normalizes a module or file name the way the kernel does
// ("crc32c-intel.ko" -> "crc32c_intel").
func moduleName(s string) string {
	return strings.ReplaceAll(strings.TrimSuffix(filepath.Base(s), ".ko"), "-", "_")
}

// ModuleLoadOrder returns the .ko files that load the wanted modules, each
// after the modules it depends on (the "depends=" field of its .modinfo
// section). The package has no modules.dep, and busybox insmod takes paths,
// so the order is worked out here. Modules the kernel has built in are not
// in the package and are skipped; a wanted module that is neither found nor
// built in is an error.
func ModuleLoadOrder(modulesDir string, builtin func(string) bool, wanted ...string) ([]string, error) {
	paths := map[string]string{}
	err := filepath.WalkDir(modulesDir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".ko") {
			paths[moduleName(p)] = p
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name, from string) error
	visit = func(name, from string) error {
		switch state[name] {
		case 1:
			return fmt.Errorf("module dependency cycle at %s", name)
		case 2:
			return nil
		}
		p, ok := paths[name]
		if !ok {
			if builtin(name) {
				state[name] = 2
				return nil
			}
			return fmt.Errorf("module %s (needed by %s) is neither in %s nor built in", name, from, modulesDir)
		}
		state[name] = 1
		deps, err := moduleDepends(p)
		if err != nil {
			return err
		}
		for _, dep := range deps {
			if err := visit(dep, name); err != nil {
				return err
			}
		}
		state[name] = 2
		order = append(order, p)
		return nil
	}
	for _, w := range wanted {
		if err := visit(moduleName(w), "the test bed"); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// moduleDepends reads the depends= entry of a module's .modinfo section.
func moduleDepends(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("%s: no .modinfo section", path)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("%s: .modinfo: %w", path, err)
	}
	for _, field := range bytes.Split(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(field, []byte("depends=")); ok {
			if len(v) == 0 {
				return nil, nil
			}
			var out []string
			for _, d := range strings.Split(string(v), ",") {
				out = append(out, moduleName(d))
			}
			return out, nil
		}
	}
	return nil, nil
}

// builtinModules reads lib/modules/<release>/modules.builtin, listing the
// modules compiled into the kernel.
func builtinModules(data []byte) func(string) bool {
	set := map[string]bool{}
	for _, line := range strings.Split(string(data), "\n") {
		if line != "" {
			set[moduleName(line)] = true
		}
	}
	return func(name string) bool { return set[name] }
}
