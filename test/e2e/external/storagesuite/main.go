// Command storagesuite builds the storage suite's test images or runs one
// pass of the external storage suite against csi-qcow2 and prints the
// counts per suite. From the repository, after
// test/e2e/cluster/build-e2e-test.sh:
//
//	go run ./test/e2e/external/storagesuite -bin ~/.cache/csi-qcow2-e2e/k8s-v1.37.2/bin -images /tmp/e2e-images.tar
//	go run ./test/e2e/external/storagesuite -bin ... -kubeconfig ... [-pass snapshots] [-local] [-dry-run]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/csi-qcow2/csi-qcow2/test/e2e/external"
)

func main() {
	bin := flag.String("bin", "", "directory of e2e.test, kubectl and agnhost (build-e2e-test.sh prints it)")
	images := flag.String("images", "", "write the test images' archive to this file and exit")
	cache := flag.String("cache", filepath.Join(os.Getenv("HOME"), ".cache", "csi-qcow2-e2e"), "where Debian's busybox-static is fetched to")
	kubeconfig := flag.String("kubeconfig", os.Getenv("KUBECONFIG"), "the cluster's kubeconfig")
	testDriver := flag.String("testdriver", "test/e2e/testdriver.yaml", "the testdriver file")
	pass := flag.String("pass", "main", "main or snapshots")
	reportDir := flag.String("report-dir", "", "where reports go (default: a new temporary directory)")
	kubeletRoot := flag.String("kubelet-root-dir", "", "the kubelet's root directory")
	dryRun := flag.Bool("dry-run", false, "list the specs that would run")
	procs := flag.Int("procs", 4, "specs run at once, by the ginkgo CLI in -bin")
	local := flag.Bool("local", false, "skip the specs the local cluster cannot run (external.LocalClusterSkips)")
	noExt4Growth := flag.Bool("skip-ext4-growth", false, "skip the specs that grow a mounted ext4 (no CAP_SYS_RESOURCE)")
	flag.Parse()
	var skips []string
	if *local {
		skips = append(skips, external.LocalClusterSkips...)
	}
	if *noExt4Growth {
		skips = append(skips, external.SkipExt4Growth)
	}
	if err := run(*bin, *images, *cache, *kubeconfig, *testDriver, *pass, *reportDir, *kubeletRoot, *dryRun, *procs, skips); err != nil {
		fmt.Fprintln(os.Stderr, "storagesuite:", err)
		os.Exit(1)
	}
}

func run(bin, images, cache, kubeconfig, testDriver, pass, reportDir, kubeletRoot string, dryRun bool, procs int, skips []string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if bin == "" {
		return fmt.Errorf("-bin is required")
	}
	if images != "" {
		return external.BuildImagesFromDebian(ctx, filepath.Join(cache, "busybox"), filepath.Join(bin, "agnhost"), images)
	}
	var p external.Pass
	td, err := filepath.Abs(testDriver)
	if err != nil {
		return err
	}
	switch pass {
	case "main":
		p = external.MainPass(td)
	case "snapshots":
		p = external.SnapshotPass(td)
	default:
		return fmt.Errorf("-pass %q: main or snapshots", pass)
	}
	p.Skip = append(p.Skip, skips...)
	if reportDir == "" {
		if reportDir, err = os.MkdirTemp("", "csi-qcow2-storagesuite-"); err != nil {
			return err
		}
	}
	r, err := external.Run(ctx, external.Options{
		E2ETest: filepath.Join(bin, "e2e.test"), Kubectl: filepath.Join(bin, "kubectl"),
		Ginkgo: filepath.Join(bin, "ginkgo"), Procs: procs,
		Kubeconfig: kubeconfig, KubeletRootDir: kubeletRoot, ReportDir: reportDir, DryRun: dryRun,
	}, p)
	fmt.Print(r.Summary())
	fmt.Println("reports in", reportDir)
	return err
}
