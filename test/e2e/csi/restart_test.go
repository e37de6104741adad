package csi

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The writer appends 4 KiB blocks to /data/log, each synced (conv=fsync)
// before it prints "acked I SUM"; a failed write prints "error I" and the
// loop goes on, so that a path that recovers shows it.
const writerScript = `set +e; i=0
while true; do
  dd if=/dev/urandom of=/tmp/b bs=4096 count=1 2>/dev/null
  if dd if=/tmp/b of=/data/log bs=4096 seek=$i count=1 conv=notrunc,fsync 2>/dev/null; then
    echo "acked $i $(md5sum < /tmp/b | cut -c1-32)"; i=$((i+1))
  else
    echo "error $i"; sleep 1
  fi
done`

var ackedLine = regexp.MustCompile(`(?m)^acked (\d+) ([0-9a-f]{32})$`)

// acked parses the writer's log: the sum of each acknowledged block, and
// whether a write failed.
func acked(log string) (map[int]string, bool) {
	m := map[int]string{}
	for _, s := range ackedLine.FindAllStringSubmatch(log, -1) {
		i, _ := strconv.Atoi(s[1])
		m[i] = s[2]
	}
	return m, strings.Contains(log, "\nerror ") || strings.HasPrefix(log, "error ")
}

// The node plugin's pod is deleted (the DaemonSet starts another) while a
// pod writes to a volume it serves. What the writer sees is the attach
// path's (docs/driver.md, "Restart"): through kernel NBD the new plugin
// takes the device over and writes go on without an error; through FUSE
// the device fails the next write (EIO, not a hang) until the volume is
// staged again. Either way every acknowledged block reads back from a
// new pod, and the volume unstages and deletes.
func TestNodePluginRestartUnderLoad(t *testing.T) {
	e := setup(t)
	n := e.newNamespace(t)
	n.createClaim(claim{name: "vol", size: "64Mi"})
	n.startPod(pod{name: "writer", claim: "vol", script: writerScript})
	node := n.waitRunning("writer")
	n.waitFor("50 blocks acknowledged", 3*time.Minute, func() (bool, error) {
		m, failed := acked(n.logs("writer"))
		if failed {
			t.Fatalf("a write failed before the restart: %s", n.logs("writer"))
		}
		return len(m) >= 50, fmt.Errorf("%d acked", len(m))
	})
	old := n.driverPod(node)
	if err := n.kube.CoreV1().Pods(old.Namespace).Delete(n.ctx, old.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	var plugin = old
	n.waitFor("a new node plugin ready", 5*time.Minute, func() (bool, error) {
		plugin = n.driverPod(node)
		return plugin.UID != old.UID, fmt.Errorf("still %s", old.Name)
	})
	path := n.attachPath(plugin)
	before, _ := acked(n.logs("writer"))
	t.Logf("attach path %s; %d blocks acknowledged when the new plugin was ready", path, len(before))
	switch path {
	case "nbd":
		n.waitFor("50 more blocks acknowledged through the same device", 5*time.Minute, func() (bool, error) {
			m, failed := acked(n.logs("writer"))
			if failed {
				t.Fatalf("a write failed across the restart on kernel NBD: %s", n.logs("writer"))
			}
			return len(m) >= len(before)+50, fmt.Errorf("%d acked", len(m))
		})
	case "fuse":
		n.waitFor("the writer's next write fails", 5*time.Minute, func() (bool, error) {
			_, failed := acked(n.logs("writer"))
			return failed, nil
		})
	}
	blocks, _ := acked(n.logs("writer"))
	n.deletePod("writer")
	last := 0
	for i := range blocks {
		last = max(last, i)
	}
	out := n.runPod(pod{name: "reader", claim: "vol", script: fmt.Sprintf(
		`i=0; while [ $i -le %d ]; do echo "block $i $(dd if=/data/log bs=4096 skip=$i count=1 2>/dev/null | md5sum | cut -c1-32)"; i=$((i+1)); done`, last)})
	got := map[int]string{}
	for _, s := range regexp.MustCompile(`(?m)^block (\d+) ([0-9a-f]{32})$`).FindAllStringSubmatch(out, -1) {
		i, _ := strconv.Atoi(s[1])
		got[i] = s[2]
	}
	for i, want := range blocks {
		if got[i] != want {
			t.Errorf("acknowledged block %d reads %q, was written %s", i, got[i], want)
		}
	}
	t.Logf("%d acknowledged blocks read back", len(blocks))
}
