package vm

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
)

// TestGuest boots the test bed once and reports each guest script as a
// subtest. CSI_QCOW2_VM_RUN selects scripts by name (a regular
// expression), CSI_QCOW2_VM_STRESS=1 runs their longer variants, and
// CSI_QCOW2_VM_CONSOLE=1 streams the guest console to stderr.
func TestGuest(t *testing.T) {
	testtools.Need(t, "qemu-system-x86_64", "busybox", "cpio", "xz", "dpkg", "apt-get",
		"mke2fs", "e2fsck", "mkfs.xfs", "blkdiscard", "mkfs.ext4", "blkid", "fsck", "fsck.ext4",
		"resize2fs", "xfs_growfs", "fstrim", "ldd", "go")
	names, err := TestNames()
	if err != nil {
		t.Fatal(err)
	}
	run := os.Getenv("CSI_QCOW2_VM_RUN")
	if run != "" {
		re, err := regexp.Compile(run)
		if err != nil {
			t.Fatalf("CSI_QCOW2_VM_RUN: %v", err)
		}
		var sel []string
		for _, n := range names {
			if re.MatchString(n) {
				sel = append(sel, n)
			}
		}
		names = sel
	}
	stress := os.Getenv("CSI_QCOW2_VM_STRESS") == "1"

	cache, err := CacheDir()
	if err != nil {
		t.Fatal(err)
	}
	k, err := FetchKernel(cache)
	if err != nil {
		t.Fatalf("kernel: %v", err)
	}
	t.Logf("kernel %s (cache %s)", k.Package, cache)

	root := moduleRoot(t)
	tmp := t.TempDir()
	initrd := filepath.Join(tmp, "initramfs.cpio")
	if err := BuildInitramfs(k, root, filepath.Join(tmp, "root"), initrd); err != nil {
		t.Fatalf("initramfs: %v", err)
	}

	// Each script bounds itself; the whole VM is bounded too, so a wedged
	// guest kernel cannot hang go test. The bounds catch hangs: a loaded
	// host slows TCG several times over, and a test must not fail for that.
	stepTimeout, whole := 300, 15*time.Minute
	if stress {
		stepTimeout, whole = 900, 40*time.Minute
	}
	if d, ok := t.Deadline(); ok {
		// go test's own -timeout (10 minutes unless set) must not end
		// the binary first: then no result of the guest would show.
		whole = min(whole, time.Until(d)-30*time.Second)
	}
	ctx, cancel := context.WithTimeout(context.Background(), whole)
	defer cancel()
	opts := BootOptions{Vmlinux: k.Vmlinux, Initrd: initrd, MemoryMiB: 1536,
		Run: run, StepTimeoutSec: stepTimeout, Stress: stress}
	if os.Getenv("CSI_QCOW2_VM_CONSOLE") == "1" {
		opts.Console = os.Stderr
	}
	start := time.Now()
	res, bootErr := Boot(ctx, opts)
	if res == nil {
		t.Fatalf("qemu: %v", bootErr)
	}
	t.Logf("guest ran %v", time.Since(start).Round(time.Millisecond))
	for _, n := range res.Notes {
		t.Errorf("guest: %s", n)
	}
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			switch res.Status[name] {
			case "PASS":
				if testing.Verbose() {
					t.Log("\n" + strings.Join(res.Output[name], "\n"))
				}
			case "FAIL":
				t.Errorf("guest test failed:\n%s", strings.Join(res.Output[name], "\n"))
			default:
				t.Errorf("no result (guest died or timed out):\n%s", strings.Join(res.Output[name], "\n"))
			}
		})
	}
	if bootErr != nil || !res.Done || ctx.Err() != nil {
		t.Errorf("guest did not finish cleanly (qemu: %v, done line: %v, timeout: %v); console tail:\n%s",
			bootErr, res.Done, ctx.Err(), tail(res.Console, 60))
	}
}

func moduleRoot(t *testing.T) string {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	return filepath.Dir(strings.TrimSpace(string(out)))
}

func tail(lines []string, n int) string {
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
