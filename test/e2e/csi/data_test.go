package csi

import (
	"fmt"
	"regexp"
	"testing"
)

// The pods' data: 8 MiB of random bytes, in a file on a filesystem volume
// or at the start of a block volume; the scripts print its MD5 sum alone.
const dataMiB = 8

func writeScript(block bool) string {
	if block {
		return fmt.Sprintf("dd if=/dev/urandom of=/tmp/d bs=1M count=%d 2>/dev/null; dd if=/tmp/d of=%s bs=1M conv=fsync 2>/dev/null; md5sum < /tmp/d", dataMiB, blockDevice)
	}
	return fmt.Sprintf("dd if=/dev/urandom of=/data/d bs=1M count=%d conv=fsync 2>/dev/null; sync; md5sum < /data/d", dataMiB)
}

func readScript(block bool) string {
	if block {
		return fmt.Sprintf("dd if=%s bs=1M count=%d 2>/dev/null | md5sum", blockDevice, dataMiB)
	}
	return "md5sum < /data/d"
}

var md5Line = regexp.MustCompile(`^([0-9a-f]{32})\s+-$`)

// sum extracts the MD5 sum a script printed.
func sum(t *testing.T, out string) string {
	t.Helper()
	m := md5Line.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no md5sum in the pod's output %q", out)
	}
	return m[1]
}

// writeData writes the data into the claim in a pod and returns its sum.
func (n *ns) writeData(name, claimName string, block bool) string {
	n.t.Helper()
	return sum(n.t, n.runPod(pod{name: name, claim: claimName, block: block, script: writeScript(block)}))
}

// readData reads the data from the claim in a pod and returns its sum.
func (n *ns) readData(name, claimName string, block bool) string {
	n.t.Helper()
	return sum(n.t, n.runPod(pod{name: name, claim: claimName, block: block, script: readScript(block)}))
}
