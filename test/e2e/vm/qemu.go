package vm

import (
	"bufio"
	"context"
	"io"
	"os"
	"os/exec"
	"strings"
)

// qboot boots an uncompressed kernel much faster than SeaBIOS under TCG.
const qbootROM = "/usr/share/qemu/qboot.rom"

// BootOptions say how to run the guest.
type BootOptions struct {
	Vmlinux, Initrd string
	MemoryMiB       int
	// Run is an extended regular expression selecting tests by name; ""
	// runs all.
	Run string
	// StepTimeoutSec bounds each guest test.
	StepTimeoutSec int
	Stress         bool
	// Console receives every line the guest prints, as it arrives.
	Console io.Writer
}

// Boot runs the guest under qemu-system-x86_64 with TCG until it powers
// off or ctx ends (the process is killed then), and returns its parsed
// console and QEMU's exit error.
func Boot(ctx context.Context, o BootOptions) (*Results, error) {
	appendLine := []string{"console=ttyS0", "rdinit=/init", "panic=-1", "quiet",
		"vmtest.timeout=" + itoa(o.StepTimeoutSec)}
	if o.Run != "" {
		appendLine = append(appendLine, "vmtest.run="+o.Run)
	}
	if o.Stress {
		appendLine = append(appendLine, "vmtest.stress=1")
	}
	args := []string{
		// /dev/kvm here is a hypervisor that runs only specially built
		// guests: TCG is the accelerator that works everywhere.
		"-accel", "tcg", "-m", itoa(o.MemoryMiB), "-smp", "1",
		"-nodefaults", "-no-reboot", "-display", "none", "-serial", "stdio",
		"-kernel", o.Vmlinux, "-initrd", o.Initrd,
		"-append", strings.Join(appendLine, " "),
	}
	if _, err := os.Stat(qbootROM); err == nil {
		args = append(args, "-bios", qbootROM)
	}
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	res := newResults()
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		if o.Console != nil {
			io.WriteString(o.Console, line+"\n")
		}
		res.add(line)
	}
	return res, cmd.Wait()
}
