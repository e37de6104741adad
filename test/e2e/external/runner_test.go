package external

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

func TestParseReport(t *testing.T) {
	report := `[{"SpecReports": [
 {"LeafNodeType": "SynchronizedBeforeSuite", "State": "passed"},
 {"ContainerHierarchyTexts": ["External Storage", "[Driver: csi-qcow2.io]", "[Testpattern: Dynamic PV (default fs)] provisioning"],
  "LeafNodeText": "should provision storage with pvc data source", "LeafNodeType": "It", "State": "passed", "RunTime": 2000000000},
 {"ContainerHierarchyTexts": ["External Storage", "[Driver: csi-qcow2.io]", "[Testpattern: Dynamic PV (block volmode)]", "volumeMode"],
  "LeafNodeText": "should fail to use a volume in a pod with mismatched mode", "LeafNodeType": "It", "State": "failed", "Failure": {"Message": "timed out"}},
 {"ContainerHierarchyTexts": ["External Storage", "[Driver: csi-qcow2.io]", "[Testpattern: Dynamic PV (ntfs)] volumes"],
  "LeafNodeText": "should store data", "LeafNodeType": "It", "State": "skipped"},
 {"LeafNodeType": "ReportAfterSuite", "State": "failed", "Failure": {"Message": "no report"}}
]}]`
	path := filepath.Join(t.TempDir(), "report.json")
	if err := os.WriteFile(path, []byte(report), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := ParseReport(path)
	if err != nil {
		t.Fatal(err)
	}
	if r.Passed != 1 || r.Failed != 1 || r.Skipped != 1 || len(r.Specs) != 3 || len(r.SuiteFailures) != 1 {
		t.Fatalf("counts: %+v", r)
	}
	if s := r.Specs[1]; s.Suite != "volumeMode" || s.Pattern != "Dynamic PV (block volmode)" || s.Failure != "timed out" {
		t.Errorf("spec: %+v", s)
	}
	if got := r.BySuite(""); got["provisioning"] != 1 || got["volumes"] != 1 {
		t.Errorf("by suite: %v", got)
	}
	t.Log("\n" + r.Summary())
}

func TestFlags(t *testing.T) {
	o := Options{E2ETest: "e2e.test", Kubeconfig: "/k", ReportDir: "/r", DryRun: true}
	args := o.Flags(SnapshotPass("/td.yaml"))
	for _, want := range []string{"-kubeconfig=/k", "-storage.testdriver=/td.yaml", "-ginkgo.dry-run",
		"-ginkgo.json-report=/r/snapshots-report.json", `-ginkgo.focus=External.Storage.*csi-qcow2\.io.*\[Feature:VolumeSnapshotDataSource\]`} {
		if !slices.Contains(args, want) {
			t.Errorf("no %s in %q", want, args)
		}
	}
}

// Under the ginkgo CLI the selection and report flags are the CLI's,
// e2e.test's own flags follow "--", and a dry run is in series.
func TestCommandUnderGinkgo(t *testing.T) {
	o := Options{E2ETest: "/b/e2e.test", Ginkgo: "/b/ginkgo", Procs: 4, Kubeconfig: "/k", ReportDir: "/r"}
	name, args := o.Command(MainPass("/td.yaml"))
	if name != "/b/ginkgo" {
		t.Fatalf("runs %s", name)
	}
	sep := slices.Index(args, "--")
	if sep < 0 || sep == 0 || args[sep-1] != "/b/e2e.test" {
		t.Fatalf("no e2e.test -- in %q", args)
	}
	cli, suite := args[:sep], args[sep+1:]
	for _, want := range []string{"--procs=4", "--output-dir=/r", "--json-report=main-report.json", `--focus=External.Storage.*csi-qcow2\.io`, `--skip=\[Disruptive\]`} {
		if !slices.Contains(cli, want) {
			t.Errorf("no %s before e2e.test in %q", want, cli)
		}
	}
	for _, want := range []string{"-kubeconfig=/k", "-storage.testdriver=/td.yaml", "-provider=skeleton"} {
		if !slices.Contains(suite, want) {
			t.Errorf("no %s after -- in %q", want, suite)
		}
	}
	for _, a := range suite {
		if strings.HasPrefix(a, "-ginkgo.") {
			t.Errorf("e2e.test gets %s beside the CLI's own", a)
		}
	}
	o.DryRun = true
	if _, args := o.Command(MainPass("/td.yaml")); !slices.Contains(args, "--procs=1") || !slices.Contains(args, "--dry-run") {
		t.Errorf("dry run: %q", args)
	}
	o.Ginkgo = ""
	if name, args := o.Command(MainPass("/td.yaml")); name != "/b/e2e.test" || !slices.Contains(args, "-ginkgo.dry-run") {
		t.Errorf("without the CLI: %s %q", name, args)
	}
}

// Narrowed keeps a pass's own focus and adds re wherever it falls: a
// snapshot spec of multiVolume names multiVolume before its feature tag.
func TestNarrowed(t *testing.T) {
	spec := "External Storage [Driver: csi-qcow2.io] [Testpattern: Dynamic PV (xfs)] multiVolume should concurrently access the volume and restored snapshot from pods on the same node [LinuxOnly] [Feature:VolumeSnapshotDataSource] [Feature:VolumeSourceXFS]"
	other := "External Storage [Driver: csi-qcow2.io] [Testpattern: Dynamic Snapshot (delete policy)] snapshottable [Feature:VolumeSnapshotDataSource] volume snapshot controller should check snapshot fields"
	plain := "External Storage [Driver: csi-qcow2.io] [Testpattern: Dynamic PV (block volmode)] multiVolume should concurrently access the single volume from pods on the same node"
	for _, tc := range []struct {
		p    Pass
		name string
		want bool
	}{
		{SnapshotPass("td"), spec, true},
		{SnapshotPass("td"), other, false},
		{SnapshotPass("td"), plain, false},
		{MainPass("td"), plain, true},
		{MainPass("td"), other, false},
	} {
		n := tc.p.Narrowed("multiVolume")
		if len(n.Focus) != 1 {
			t.Fatalf("%d focus expressions", len(n.Focus))
		}
		if got := regexp.MustCompile(n.Focus[0]).MatchString(tc.name); got != tc.want {
			t.Errorf("%s narrowed to multiVolume matches %q: %v, want %v", tc.p.Name, tc.name, got, tc.want)
		}
	}
}

// SkipExt4Growth takes the default-fs specs that grow a mounted ext4 and
// nothing of xfs or block.
func TestSkipExt4Growth(t *testing.T) {
	const d = "External Storage [Driver: csi-qcow2.io] [Testpattern: "
	re := regexp.MustCompile(SkipExt4Growth)
	for name, want := range map[string]bool{
		d + "Dynamic PV (default fs)] provisioning should provision correct filesystem size when restoring snapshot to larger size pvc [Feature:VolumeSnapshotDataSource]":    true,
		d + "Dynamic PV (default fs)] volume-expand should resize volume when PVC is edited while pod is using it":                                                            true,
		d + "Dynamic PV (default fs) (allowExpansion)] volume-expand Verify if offline PVC expansion works":                                                                   true,
		d + "Dynamic PV (block volmode)] provisioning should provision correct filesystem size when restoring snapshot to larger size pvc [Feature:VolumeSnapshotDataSource]": false,
		d + "Dynamic PV (xfs)] volume-expand should resize volume when PVC is edited while pod is using it":                                                                   false,
		d + "Dynamic PV (default fs)] provisioning should provision storage with snapshot data source [Feature:VolumeSnapshotDataSource]":                                     false,
	} {
		if got := re.MatchString(name); got != want {
			t.Errorf("%q: skipped %v, want %v", name, got, want)
		}
	}
}
