package nbdattach

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// DefaultSysBlock is where the kernel lists block devices.
const DefaultSysBlock = "/sys/block"

// Device is an nbd device as sysfs shows it.
type Device struct {
	Index int
	Name  string // "nbd3"
	Path  string // "/dev/nbd3"
	// Backend is the identifier given at CONNECT ("" when the device is not
	// configured, or was configured without one, e.g. through ioctls).
	Backend string
	// PID is what the kernel recorded when the device was configured (0
	// when unconfigured): the thread that sent CONNECT or NBD_DO_IT, in the
	// initial pid namespace. It is not updated by a re-adopting RECONFIGURE
	// and, once that thread is gone, may name an unrelated process: shown,
	// never trusted (ServerAlive).
	PID int
	// Size in bytes (0 when unconfigured).
	Size int64
}

// Configured reports whether the kernel has a configuration for the device:
// the pid file exists only then.
func (d Device) Configured() bool { return d.PID > 0 }

// ServerAlive reports whether a server serves the device. For a device
// with a backend identifier that is whether a process holds the
// identifier's lock (backend_lock.go: this network namespace), whatever
// its recorded pid says. A device attached by ioctl has no identifier but
// dies with its server (NBD_DO_IT returns), so its recorded thread is
// asked: alive unless gone or a zombie (whose sockets are closed).
func (d Device) ServerAlive() bool {
	switch {
	case !d.Configured():
		return false
	case d.Backend != "":
		return backendServed(d.Backend)
	}
	return taskAlive(d.PID)
}

// taskAlive reports whether the task (process or thread) runs.
func taskAlive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// "pid (comm) S ...": the state follows the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 || i+2 >= len(b) {
		return false
	}
	state := b[i+2]
	return state != 'Z' && state != 'X'
}

// ListDevices returns every nbd device under sysBlock ("" means
// DefaultSysBlock), ordered by index.
func ListDevices(sysBlock string) ([]Device, error) {
	if sysBlock == "" {
		sysBlock = DefaultSysBlock
	}
	entries, err := os.ReadDir(sysBlock)
	if err != nil {
		return nil, fmt.Errorf("nbdattach: list %s: %w", sysBlock, err)
	}
	var out []Device
	for _, e := range entries {
		idx, ok := nbdIndex(e.Name())
		if !ok {
			continue
		}
		d, err := readDevice(sysBlock, e.Name(), idx)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Index < out[j].Index })
	return out, nil
}

// FindByBackend returns the configured device whose backend identifier is
// id. Two devices with one identifier would mean two servers for one
// volume: that is reported as an error rather than guessed at.
func FindByBackend(sysBlock, id string) (Device, bool, error) {
	if id == "" {
		return Device{}, false, errors.New("nbdattach: empty backend identifier")
	}
	devs, err := ListDevices(sysBlock)
	if err != nil {
		return Device{}, false, err
	}
	var found []Device
	for _, d := range devs {
		if d.Configured() && d.Backend == id {
			found = append(found, d)
		}
	}
	switch len(found) {
	case 0:
		return Device{}, false, nil
	case 1:
		return found[0], true, nil
	}
	return Device{}, false, fmt.Errorf("nbdattach: backend %q is attached to %d devices (%s and %s)", id, len(found), found[0].Path, found[1].Path)
}

// ResolveDevice accepts "/dev/nbdN", "nbdN" or a backend identifier and
// returns the device it names.
func ResolveDevice(sysBlock, arg string) (Device, error) {
	name := strings.TrimPrefix(arg, "/dev/")
	if idx, ok := nbdIndex(name); ok {
		if sysBlock == "" {
			sysBlock = DefaultSysBlock
		}
		if _, err := os.Stat(filepath.Join(sysBlock, name)); err != nil {
			return Device{}, fmt.Errorf("nbdattach: no device %s: %w", arg, err)
		}
		return readDevice(sysBlock, name, idx)
	}
	d, ok, err := FindByBackend(sysBlock, arg)
	if err != nil {
		return Device{}, err
	}
	if !ok {
		return Device{}, fmt.Errorf("nbdattach: no nbd device is attached with backend identifier %q", arg)
	}
	return d, nil
}

// deviceName is the sysfs name of device index: "nbd3".
func deviceName(index int) string { return "nbd" + strconv.Itoa(index) }

// nbdIndex parses "nbd<N>" (a whole disk, not a partition like "nbd0p1").
func nbdIndex(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, "nbd")
	if !ok || rest == "" {
		return 0, false
	}
	n, err := strconv.Atoi(rest)
	if err != nil || n < 0 || strconv.Itoa(n) != rest {
		return 0, false
	}
	return n, true
}

func readDevice(sysBlock, name string, idx int) (Device, error) {
	dir := filepath.Join(sysBlock, name)
	d := Device{Index: idx, Name: name, Path: "/dev/" + name}
	var err error
	if d.Backend, err = readSysString(filepath.Join(dir, "backend")); err != nil {
		return Device{}, err
	}
	pid, err := readSysInt(filepath.Join(dir, "pid"))
	if err != nil {
		return Device{}, err
	}
	d.PID = int(pid)
	sectors, err := readSysInt(filepath.Join(dir, "size"))
	if err != nil {
		return Device{}, err
	}
	// sysfs counts 512-byte sectors whatever the logical block size.
	d.Size = sectors * 512
	return d, nil
}

// readSysString returns a sysfs attribute without its newline; a missing
// attribute reads as "" (the kernel creates backend and pid only while the
// device is configured).
func readSysString(path string) (string, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("nbdattach: read %s: %w", path, err)
	}
	return strings.TrimRight(string(b), "\n"), nil
}

func readSysInt(path string) (int64, error) {
	s, err := readSysString(path)
	if err != nil || s == "" {
		return 0, err
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("nbdattach: %s: not a number: %q", path, s)
	}
	return n, nil
}
