package vm

import (
	"strings"
	"testing"
)

func TestResultsParse(t *testing.T) {
	console := `[    0.1] booting
@@vm: insmod /modules/xfs.ko failed
@@vm: RUN 00-boot
[00-boot] hello
[    5.0] nbd: a kernel line
@@vm: PASS 00-boot 1s
@@vm: RUN 10-ext4
[10-ext4] FAIL: checksums differ
@@vm: FAIL 10-ext4 3s
@@vm: RUN 40-restart
[40-restart] still running when the guest died`
	r := newResults()
	for _, l := range strings.Split(console, "\n") {
		r.add(l)
	}
	if r.Status["00-boot"] != "PASS" || r.Status["10-ext4"] != "FAIL" {
		t.Errorf("status %v", r.Status)
	}
	if _, ok := r.Status["40-restart"]; ok || r.Done {
		t.Errorf("a test without a result line got one (done %v)", r.Done)
	}
	if got := strings.Join(r.Output["00-boot"], "|"); !strings.Contains(got, "[00-boot] hello|[    5.0] nbd: a kernel line") {
		t.Errorf("00-boot output %q: want its lines and the kernel's meanwhile", got)
	}
	if len(r.Notes) != 1 || !strings.Contains(r.Notes[0], "insmod") {
		t.Errorf("notes %v", r.Notes)
	}
	if strings.Join(r.Started, ",") != "00-boot,10-ext4,40-restart" {
		t.Errorf("started %v", r.Started)
	}
	r.add("@@vm: done")
	if !r.Done {
		t.Error("done line not seen")
	}
}
