package cluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Stop tears down everything Start made, in this order: the pods (through
// the API, so that the kubelet stops their sandboxes and removes their
// network namespaces), the kubelet, whatever containers are left (through
// ctr), containerd, the control plane; then it sweeps what a crash could
// leave: processes naming the root, the kubelet's cgroups, network
// namespaces made since Start, mounts under the root, the CNI bridge; and
// removes the host directories it made (Cluster.hostDirs) and the root,
// unless something is left, which the error names (the root then stays).
// The logs (Root/logs) go with the root unless Config.KeepLogs is set or
// Start failed; Stop prints where they are.
func (c *Cluster) Stop() error {
	if c.stopped {
		return nil
	}
	c.stopped = true
	start := time.Now()
	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	if c.Client != nil && c.running("kubelet") {
		c.deletePods(ctx)
	}
	// Components stop in reverse order of start.
	for i := len(c.procs) - 1; i >= 0; i-- {
		p := c.procs[i]
		if p.name == "containerd" {
			c.removeContainers(ctx)
		}
		if err := stopProc(p); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, c.sweep(c.proxyStarted)...)
	if err := errors.Join(errs...); err != nil {
		c.logf("teardown incomplete after %.1f s; root %s and its logs in %s stay", time.Since(start).Seconds(), c.Root, c.path("logs"))
		return err
	}
	if c.cfg.KeepLogs || c.failed {
		ents, err := os.ReadDir(c.Root)
		if err != nil {
			return err
		}
		for _, e := range ents {
			if e.Name() != "logs" {
				if err := os.RemoveAll(c.path(e.Name())); err != nil {
					return err
				}
			}
		}
		c.logf("torn down in %.1f s; the logs are kept in %s", time.Since(start).Seconds(), c.path("logs"))
		return nil
	}
	if err := os.RemoveAll(c.Root); err != nil {
		return err
	}
	c.logf("torn down in %.1f s; root %s removed with its logs", time.Since(start).Seconds(), c.Root)
	return nil
}

// sweep takes down what a crash could leave: processes naming the root,
// the kubelet's cgroups, network namespaces made since Start, mounts, loop
// devices, kube-proxy's tables (with proxy), the bridge, and the host
// directories the cluster made.
func (c *Cluster) sweep(proxy bool) []error {
	var errs []error
	errs = append(errs, c.sweepProcesses()...)
	errs = append(errs, c.sweepCgroups()...)
	errs = append(errs, c.sweepNetns()...)
	errs = append(errs, c.sweepMounts()...)
	errs = append(errs, c.sweepLoopDevices()...)
	if proxy {
		errs = append(errs, c.sweepProxyTables()...)
	}
	if c.Bridge != "" {
		if _, err := os.Stat("/sys/class/net/" + c.Bridge); err == nil {
			if out, err := exec.Command("ip", "link", "del", c.Bridge).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("ip link del %s: %v: %s", c.Bridge, err, out))
			}
		}
	}
	for _, d := range c.hostDirs {
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

func (c *Cluster) running(name string) bool {
	for _, p := range c.procs {
		if p.name == name {
			select {
			case <-p.done:
				return false
			default:
				return true
			}
		}
	}
	return false
}

// ctr runs ctr against the cluster's containerd in the k8s.io namespace
// and returns its output's non-empty lines.
func (c *Cluster) ctr(ctx context.Context, args ...string) []string {
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"-a", c.ContainerdSocket, "-n", "k8s.io"}, args...)...)
	out, err := cmd.Output()
	if err != nil {
		return nil
	}
	return strings.Fields(string(out))
}

// removeContainers kills and deletes whatever task and container containerd
// still has, so that their shims exit and remove their sockets.
func (c *Cluster) removeContainers(ctx context.Context) {
	if !c.running("containerd") {
		return
	}
	for _, id := range c.ctr(ctx, "tasks", "ls", "-q") {
		c.ctr(ctx, "tasks", "kill", "-a", "-s", "SIGKILL", id)
	}
	for _, id := range c.ctr(ctx, "tasks", "ls", "-q") {
		c.ctr(ctx, "tasks", "rm", "-f", id)
	}
	if ids := c.ctr(ctx, "containers", "ls", "-q"); len(ids) > 0 {
		c.ctr(ctx, append([]string{"containers", "rm"}, ids...)...)
	}
}

// stopProc sends SIGTERM to a component's process group, and SIGKILL after
// 15 s.
func stopProc(p *proc) error {
	defer p.log.Close()
	pid := p.cmd.Process.Pid
	select {
	case <-p.done:
		return nil
	default:
	}
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(15 * time.Second):
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s (pid %d) survived SIGKILL", p.name, pid)
	}
}

// Leftovers lists processes whose command line names the root (the
// containerd shims do) and processes in the kubelet's cgroups.
func (c *Cluster) Leftovers() []int {
	// Never this process or its parents (go run's command line may name
	// the root).
	seen := ancestors()
	var pids []int
	add := func(pid int) {
		if !seen[pid] {
			seen[pid] = true
			pids = append(pids, pid)
		}
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), c.Root) {
			add(pid)
		}
	}
	for _, dir := range c.cgroupDirs() {
		filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
				return nil
			}
			b, _ := os.ReadFile(path)
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					add(pid)
				}
			}
			return nil
		})
	}
	sort.Ints(pids)
	return pids
}

// ancestors is this process and its parents.
func ancestors() map[int]bool {
	m := map[int]bool{}
	for pid := os.Getpid(); pid > 1 && !m[pid]; {
		m[pid] = true
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			break
		}
		// pid (comm) state ppid ...: comm may hold spaces; cut after ')'.
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(f) < 2 {
			break
		}
		pid, _ = strconv.Atoi(f[1])
	}
	return m
}

func (c *Cluster) sweepProcesses() []error {
	pids := c.Leftovers()
	if len(pids) == 0 {
		return nil
	}
	c.logf("teardown: killing leftover processes %v", pids)
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if len(c.Leftovers()) == 0 {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return []error{fmt.Errorf("processes left after SIGKILL: %v", c.Leftovers())}
}

// cgroupDirs lists the kubelet's cgroup root in each hierarchy where it
// exists.
func (c *Cluster) cgroupDirs() []string {
	if c.CgroupRoot == "" {
		return nil
	}
	var dirs []string
	ents, _ := os.ReadDir("/sys/fs/cgroup")
	for _, e := range ents {
		d := filepath.Join("/sys/fs/cgroup", e.Name(), c.CgroupRoot)
		if _, err := os.Stat(d); err == nil {
			dirs = append(dirs, d)
		}
	}
	return dirs
}

// makeCgroupRoot creates the kubelet's cgroup root in every v1 hierarchy
// (the kubelet insists that it exist); cpuset needs its cpus and mems.
func (c *Cluster) makeCgroupRoot() error {
	ents, err := os.ReadDir("/sys/fs/cgroup")
	if err != nil {
		return err
	}
	for _, e := range ents {
		parent := filepath.Join("/sys/fs/cgroup", e.Name())
		if _, err := os.Stat(filepath.Join(parent, "cgroup.procs")); err != nil {
			continue
		}
		d := filepath.Join(parent, c.CgroupRoot)
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
		if e.Name() == "cpuset" {
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				b, err := os.ReadFile(filepath.Join(parent, f))
				if err != nil {
					return err
				}
				if err := os.WriteFile(filepath.Join(d, f), b, 0o644); err != nil {
					return fmt.Errorf("%s: %w", f, err)
				}
			}
		}
	}
	return nil
}

// sweepCgroups removes the kubelet's cgroups, deepest first.
func (c *Cluster) sweepCgroups() []error {
	var errs []error
	for _, dir := range c.cgroupDirs() {
		var dirs []string
		filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		for _, d := range dirs {
			var err error
			for range 50 {
				if err = syscall.Rmdir(d); err == nil || errors.Is(err, syscall.ENOENT) {
					err = nil
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("rmdir %s: %w", d, err))
			}
		}
	}
	return errs
}

const netnsDir = "/run/netns"

func listNetns() map[string]bool {
	m := map[string]bool{}
	ents, _ := os.ReadDir(netnsDir)
	for _, e := range ents {
		m[e.Name()] = true
	}
	return m
}

// NewNetns lists the CNI network namespaces (containerd's, in /run/netns)
// that appeared since Start.
func (c *Cluster) NewNetns() []string {
	var ns []string
	for name := range listNetns() {
		if !c.netnsSeen[name] && strings.HasPrefix(name, "cni-") {
			ns = append(ns, filepath.Join(netnsDir, name))
		}
	}
	sort.Strings(ns)
	return ns
}

func (c *Cluster) sweepNetns() []error {
	var errs []error
	for _, p := range c.NewNetns() {
		c.logf("teardown: removing network namespace %s", p)
		if err := syscall.Unmount(p, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
			errs = append(errs, fmt.Errorf("umount %s: %w", p, err))
			continue
		}
		if err := os.Remove(p); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// Mounts lists the mount points under the root, and under KubeletDir
// while the cluster has it bound, deepest first.
func (c *Cluster) Mounts() []string {
	var mps []string
	for _, mp := range mountPoints() {
		under := func(dir string) bool { return mp == dir || strings.HasPrefix(mp, dir+"/") }
		if under(c.Root) || (c.kubeletBound && under(KubeletDir)) {
			mps = append(mps, mp)
		}
	}
	sort.SliceStable(mps, func(i, j int) bool { return len(mps[i]) > len(mps[j]) })
	return mps
}

// mountPoints lists every mount point in this mount namespace.
func mountPoints() []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var mps []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		if fields := strings.Fields(s.Text()); len(fields) >= 5 {
			mps = append(mps, unescapeMount(fields[4]))
		}
	}
	return mps
}

func unescapeMount(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

func (c *Cluster) sweepMounts() []error {
	// A mount may be stacked on another; repeat until none is left.
	for range 10 {
		mps := c.Mounts()
		if len(mps) == 0 {
			return nil
		}
		for _, mp := range mps {
			_ = syscall.Unmount(mp, syscall.MNT_DETACH)
		}
	}
	if mps := c.Mounts(); len(mps) > 0 {
		return []error{fmt.Errorf("mounts left under %s: %v", c.Root, mps)}
	}
	return nil
}
