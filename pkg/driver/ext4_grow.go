package driver

import (
	"errors"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// CanGrowExt4Online reports whether this process may grow a mounted ext4
// (NodeExpandVolume through resize2fs): EXT4_IOC_RESIZE_FS needs
// CAP_SYS_RESOURCE, which a privileged node plugin has and some sandboxes'
// root lacks. The error says why it could not tell.
func CanGrowExt4Online() (bool, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return false, err
			}
			return caps&(1<<unix.CAP_SYS_RESOURCE) != 0, nil
		}
	}
	return false, errors.New("no CapEff in /proc/self/status")
}
