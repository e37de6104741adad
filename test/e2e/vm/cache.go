package vm

import (
	"os"
	"path/filepath"
)

// CacheDir is where downloaded kernel packages and what is extracted from
// them are kept between runs: $CSI_QCOW2_VM_CACHE, else
// $XDG_CACHE_HOME/csi-qcow2-vm, else ~/.cache/csi-qcow2-vm.
func CacheDir() (string, error) {
	if d := os.Getenv("CSI_QCOW2_VM_CACHE"); d != "" {
		return d, nil
	}
	base, err := os.UserCacheDir() // honours XDG_CACHE_HOME
	if err != nil {
		return "", err
	}
	return filepath.Join(base, "csi-qcow2-vm"), nil
}
