package external

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// A Pass is one run of the suite: which specs, with which driver file.
type Pass struct {
	Name       string
	TestDriver string   // a testdriver YAML (test/e2e/testdriver*.yaml)
	Focus      []string // -ginkgo.focus, each a regular expression
	Skip       []string // -ginkgo.skip
}

// driverFocus selects the specs the external suite defines for our driver.
const driverFocus = `External.Storage.*csi-qcow2\.io`

// MainPass is every spec for csi-qcow2 but the disruptive ones (they
// restart the kubelet over SSH) and the feature groups: the only group
// the driver claims, VolumeSnapshotDataSource, is SnapshotPass.
func MainPass(testDriver string) Pass {
	return Pass{Name: "main", TestDriver: testDriver, Focus: []string{driverFocus},
		Skip: []string{`\[Disruptive\]`, `\[Feature:`}}
}

// SnapshotPass is the VolumeSnapshotDataSource group: snapshots, restores
// and their stress tests, but for the pre-provisioned ones.
//
// Those make a VolumeSnapshotContent by hand without the label
// snapshot.storage.kubernetes.io/managed-by=NODE. Our snapshots live on
// one node, so csi-snapshotter runs per node (--node-deployment) and
// watches only the contents labelled with its node (distributed
// snapshotting): an unlabelled content is never bound, and the snapshot
// never becomes ready. A user who imports a snapshot by hand labels its
// content (docs/operations.md); the suite cannot be told to.
func SnapshotPass(testDriver string) Pass {
	return Pass{Name: "snapshots", TestDriver: testDriver,
		Focus: []string{driverFocus + `.*\[Feature:VolumeSnapshotDataSource\]`},
		Skip:  []string{`\[Disruptive\]`, `\[Testpattern: Pre-provisioned Snapshot`}}
}

// Narrowed is the pass limited to the specs whose names also match re,
// wherever it falls in the name (ginkgo ORs its focus flags, so re is
// folded into each focus expression, in either order with what follows
// the driver's part).
func (p Pass) Narrowed(re string) Pass {
	focus := make([]string, len(p.Focus))
	for i, f := range p.Focus {
		rest := strings.TrimPrefix(strings.TrimPrefix(f, driverFocus), ".*")
		if rest == "" {
			focus[i] = driverFocus + ".*(?:" + re + ")"
		} else {
			focus[i] = driverFocus + ".*(?:" + rest + ".*(?:" + re + ")|(?:" + re + ").*" + rest + ")"
		}
	}
	p.Focus = focus
	return p
}

// LocalClusterSkips are the specs that cannot pass in the local cluster
// (test/e2e/cluster) for reasons outside the driver; add them to a pass's
// Skip there.
var LocalClusterSkips = []string{
	// It deploys hello-populator and volume-data-source-validator, images
	// from registry.k8s.io that the cluster cannot pull.
	`should provision storage with any volume data source`,
	// Its host-exec pod lists /var/lib/kubelet/pods/UID on the node
	// through nsenter into PID 1's mount namespace; this sandbox's PID 1
	// is no init of the host and refuses it ("Permission denied").
	`volumeMode should not mount / map unused volumes`,
}

// SkipExt4Growth matches the specs that grow a mounted ext4 (the default
// fs): resize2fs needs CAP_SYS_RESOURCE, which a node plugin lacks where
// root lacks it (driver.CanGrowExt4Online; this sandbox), and so does
// the growth of an ext4 restored into a larger claim at stage. Block and
// xfs growth still run.
const SkipExt4Growth = `\(default fs\)[^\]]*\] (volume-expand (Verify if offline|should resize)|ephemeral should support expansion|provisioning should provision correct filesystem size when restoring snapshot to larger size pvc)`

// Options say where e2e.test and the cluster are.
type Options struct {
	E2ETest string // the e2e.test binary (build-e2e-test.sh)
	// Ginkgo is the ginkgo CLI of the version e2e.test was built with
	// (build-e2e-test.sh). When set, it runs the specs in Procs processes
	// (Serial specs still one at a time, after the rest); most of a spec's
	// time is spent waiting on pods, so a node runs several at once.
	// Empty, e2e.test runs alone, one spec at a time.
	Ginkgo     string
	Procs      int    // parallel processes under Ginkgo; default 1
	Kubectl    string // kubectl, for the suite's kubectl exec; default "kubectl" from PATH
	Kubeconfig string
	// KubeletRootDir is the kubelet's --root-dir (the local cluster's is
	// ROOT/kubelet); e2e.test only uses it for drivers it deploys itself.
	KubeletRootDir string
	ReportDir      string        // reports and e2e.test's output files go here (made if missing)
	Timeout        time.Duration // -ginkgo.timeout; default 2h
	DryRun         bool          // list the specs that would run, run none
	Args           []string      // more e2e.test flags
	Log            io.Writer     // e2e.test's output; default os.Stderr
}

// Spec is one spec of the report.
type Spec struct {
	Suite   string // the storage test suite: provisioning, snapshottable, ...
	Pattern string // the test pattern: "Dynamic PV (default fs)", ...
	Text    string // the spec's own text
	State   string // passed, failed, skipped, pending, timedout, ...
	Failure string `json:",omitempty"`
	RunTime time.Duration
}

// Result counts the specs of one pass. In a dry run the specs that would
// run count as passed.
type Result struct {
	Passed, Failed, Skipped, Pending int
	Specs                            []Spec // every It, in report order
	// SuiteFailures are failures outside specs (BeforeSuite, AfterSuite).
	SuiteFailures []string
}

// Command returns the command line that runs a pass: e2e.test's own, or
// the ginkgo CLI's around it when Options.Ginkgo is set.
func (o Options) Command(p Pass) (name string, args []string) {
	if o.Ginkgo == "" {
		return o.E2ETest, o.Flags(p)
	}
	procs := o.Procs
	if procs < 1 || o.DryRun {
		procs = 1 // Ginkgo dry-runs only in series
	}
	args = []string{
		"--procs=" + strconv.Itoa(procs),
		"--no-color",
		"--timeout=" + o.timeout().String(),
		// One report for all processes: ReportDir/NAME-report.json.
		"--output-dir=" + o.ReportDir,
		"--json-report=" + filepath.Base(o.reportPath(p)),
	}
	args = append(args, o.ginkgoSelection(p, "--")...)
	args = append(args, o.E2ETest, "--")
	return o.Ginkgo, append(args, o.suiteFlags(p)...)
}

// Flags returns e2e.test's command line for a pass run without the
// ginkgo CLI: the suite's flags and Ginkgo's, prefixed -ginkgo.
func (o Options) Flags(p Pass) []string {
	args := append(o.suiteFlags(p),
		"-ginkgo.no-color",
		"-ginkgo.timeout="+o.timeout().String(),
		"-ginkgo.json-report="+o.reportPath(p),
	)
	return append(args, o.ginkgoSelection(p, "-ginkgo.")...)
}

func (o Options) timeout() time.Duration {
	if o.Timeout == 0 {
		return 2 * time.Hour
	}
	return o.Timeout
}

// suiteFlags are e2e.test's own flags: where the cluster and driver are.
func (o Options) suiteFlags(p Pass) []string {
	kubectl := o.Kubectl
	if kubectl == "" {
		kubectl = "kubectl"
	}
	args := []string{
		"-kubeconfig=" + o.Kubeconfig,
		"-storage.testdriver=" + p.TestDriver,
		"-provider=skeleton", // no cloud: nothing to create, resize or SSH to
		"-kubectl-path=" + kubectl,
		"-report-dir=" + o.ReportDir,
		"-e2e-output-dir=" + o.ReportDir,
		"-disable-log-dump", // the log dump SSHes into the nodes
	}
	if o.KubeletRootDir != "" {
		args = append(args, "-kubelet-root-dir="+o.KubeletRootDir)
	}
	return append(args, o.Args...)
}

// ginkgoSelection are the flags that pick the specs, each with prefix:
// "--" for the ginkgo CLI, "-ginkgo." for e2e.test itself.
func (o Options) ginkgoSelection(p Pass, prefix string) []string {
	var args []string
	for _, f := range p.Focus {
		args = append(args, prefix+"focus="+f)
	}
	for _, s := range p.Skip {
		args = append(args, prefix+"skip="+s)
	}
	if o.DryRun {
		args = append(args, prefix+"dry-run")
	}
	return args
}

func (o Options) reportPath(p Pass) string {
	return filepath.Join(o.ReportDir, p.Name+"-report.json")
}

// Run runs e2e.test for one pass and returns what its report counts. An
// error means the report could not be had; failed specs are in Result.
func Run(ctx context.Context, o Options, p Pass) (Result, error) {
	if err := os.MkdirAll(o.ReportDir, 0o755); err != nil {
		return Result{}, err
	}
	log := o.Log
	if log == nil {
		log = os.Stderr
	}
	// e2e.test runs in the report directory: make relative paths absolute
	// (commands only when they name a path, not a lookup in PATH).
	for _, path := range []*string{&o.E2ETest, &o.Ginkgo, &o.Kubectl, &o.Kubeconfig, &o.ReportDir, &p.TestDriver} {
		isCmd := path == &o.E2ETest || path == &o.Ginkgo || path == &o.Kubectl
		if *path != "" && !filepath.IsAbs(*path) && (!isCmd || strings.ContainsRune(*path, '/')) {
			abs, err := filepath.Abs(*path)
			if err != nil {
				return Result{}, err
			}
			*path = abs
		}
	}
	report := o.reportPath(p)
	os.Remove(report)
	name, args := o.Command(p)
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = o.ReportDir
	cmd.Stdout, cmd.Stderr = log, log
	// Cancelled, Ginkgo gets an interrupt: it runs the cleanups (namespaces)
	// and writes its report; a minute later it is killed.
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = time.Minute
	runErr := cmd.Run()
	r, err := ParseReport(report)
	if err != nil {
		if runErr != nil {
			return r, fmt.Errorf("e2e.test: %v; no report: %v", runErr, err)
		}
		return r, err
	}
	// e2e.test exits non-zero when a spec fails, which the counts say.
	if runErr != nil && r.Failed == 0 && len(r.SuiteFailures) == 0 {
		return r, fmt.Errorf("e2e.test: %v", runErr)
	}
	return r, nil
}

// ParseReport reads a Ginkgo JSON report (-ginkgo.json-report).
func ParseReport(path string) (Result, error) {
	var r Result
	data, err := os.ReadFile(path)
	if err != nil {
		return r, err
	}
	var reports []struct {
		SpecReports []struct {
			ContainerHierarchyTexts []string
			LeafNodeText            string
			LeafNodeType            string
			State                   string
			RunTime                 time.Duration
			Failure                 *struct{ Message string }
		}
	}
	if err := json.Unmarshal(data, &reports); err != nil {
		return r, fmt.Errorf("%s: %v", path, err)
	}
	for _, rep := range reports {
		for _, s := range rep.SpecReports {
			failure := ""
			if s.Failure != nil {
				failure = s.Failure.Message
			}
			if s.LeafNodeType != "It" {
				if failure != "" {
					r.SuiteFailures = append(r.SuiteFailures, s.LeafNodeType+": "+failure)
				}
				continue
			}
			spec := Spec{Text: s.LeafNodeText, State: s.State, Failure: failure, RunTime: s.RunTime}
			spec.Pattern, spec.Suite = suiteOf(s.ContainerHierarchyTexts)
			switch s.State {
			case "passed":
				r.Passed++
			case "skipped":
				r.Skipped++
			case "pending":
				r.Pending++
			default:
				r.Failed++
			}
			r.Specs = append(r.Specs, spec)
		}
	}
	return r, nil
}

// suiteOf finds the test pattern and the suite in a spec's containers:
// "External Storage [Driver: csi-qcow2.io]", "[Testpattern: P] suite".
func suiteOf(containers []string) (pattern, suite string) {
	for i, c := range containers {
		if p, ok := strings.CutPrefix(c, "[Testpattern: "); ok {
			pattern, suite, _ = strings.Cut(p, "] ")
			if suite == "" && i+1 < len(containers) {
				pattern, suite = strings.TrimSuffix(pattern, "]"), containers[i+1]
			}
			suite, _, _ = strings.Cut(suite, " [") // the suite's tags
			return pattern, suite
		}
	}
	return "", ""
}

// BySuite counts the specs in state (all states when empty) per suite.
func (r Result) BySuite(state string) map[string]int {
	m := map[string]int{}
	for _, s := range r.Specs {
		if state == "" || s.State == state {
			m[s.Suite]++
		}
	}
	return m
}

// Summary is one line of counts and one line per suite of what ran.
func (r Result) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d passed, %d failed, %d skipped, %d pending\n", r.Passed, r.Failed, r.Skipped, r.Pending)
	ran := map[string][2]int{}
	for _, s := range r.Specs {
		if s.State == "skipped" || s.State == "pending" {
			continue
		}
		c := ran[s.Suite]
		c[0]++
		if s.State != "passed" {
			c[1]++
		}
		ran[s.Suite] = c
	}
	suites := make([]string, 0, len(ran))
	for s := range ran {
		suites = append(suites, s)
	}
	sort.Strings(suites)
	for _, s := range suites {
		fmt.Fprintf(&b, "  %-28s %3d run, %d failed\n", s, ran[s][0], ran[s][1])
	}
	return b.String()
}
