package driver

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	"github.com/onsi/ginkgo/v2"
	"github.com/onsi/gomega"

	"github.com/csi-qcow2/csi-qcow2/internal/testtools"
)

// TestSanity runs csi-sanity's Identity, Controller and Node specs
// against the driver, once per snapshot type and access type (mount,
// block). Ginkgo runs one suite per process, so each runs in a child
// process of this test binary (TestSanitySuite).
func TestSanity(t *testing.T) {
	for _, typ := range []string{"external", "internal"} {
		for _, access := range []string{"mount", "block"} {
			t.Run(typ+"/"+access, func(t *testing.T) {
				cmd := exec.Command(os.Args[0], "-test.run=^TestSanitySuite$", "-test.v")
				cmd.Env = append(os.Environ(), "CSI_QCOW2_SANITY_TYPE="+typ, "CSI_QCOW2_SANITY_ACCESS="+access)
				out, err := cmd.CombinedOutput()
				if err != nil {
					t.Fatalf("csi-sanity with %s snapshots, %s access: %v\n%s", typ, access, err, out)
				}
				t.Logf("csi-sanity with %s snapshots, %s access passed", typ, access)
			})
		}
	}
}

func TestSanitySuite(t *testing.T) {
	typ := os.Getenv("CSI_QCOW2_SANITY_TYPE")
	if typ == "" {
		t.Skip("run by TestSanity in a child process")
	}
	// The node specs stage, format, mount and publish volumes.
	testtools.NeedRoot(t)
	testtools.Need(t, "mkfs.ext4", "mount", "umount", "blkid", "resize2fs")
	_, sock := startDriver(t, Config{})
	cfg := sanity.NewTestConfig()
	cfg.Address = "unix://" + sock
	dir := t.TempDir()
	cfg.TargetPath = filepath.Join(dir, "target")
	cfg.StagingPath = filepath.Join(dir, "staging")
	cfg.TestVolumeSize = 64 << 20
	cfg.IdempotentCount = 10
	cfg.TestSnapshotParameters = map[string]string{"type": typ}
	cfg.TestVolumeAccessType = os.Getenv("CSI_QCOW2_SANITY_ACCESS")
	sanity.GinkgoTest(&cfg)
	gomega.RegisterFailHandler(ginkgo.Fail)
	suite, reporter := ginkgo.GinkgoConfiguration()
	suite.SkipStrings = []string{
		// csi-test v5.6.0 compares the snapshot's topology with the
		// node's by reflect.DeepEqual on two protobuf messages, one of
		// which gRPC has marshalled (its internal state differs), so no
		// driver that returns a topology passes it. The same property
		// is checked with proto.Equal in TestSnapshotTopology.
		"should succeed when creating a snapshot with accessibility requirements",
	}
	if !hasCapSysResource(t) {
		// ext4 grows online only for CAP_SYS_RESOURCE (the kernel's
		// ext4_resize_begin); this sandbox's root lacks it, a
		// privileged node plugin has it. TestNodeExpand covers block
		// and xfs here, and ext4 where the capability is there.
		t.Log("no CAP_SYS_RESOURCE: csi-sanity's node expansion spec (ext4 online grow) is skipped")
		suite.SkipStrings = append(suite.SkipStrings, "should work if node-expand is called after node-publish")
	}
	reporter.Succinct = true
	ginkgo.RunSpecs(t, "csi-qcow2 sanity ("+typ+" snapshots, "+cfg.TestVolumeAccessType+" access)", suite, reporter)
}
