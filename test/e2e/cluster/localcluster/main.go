// Command localcluster starts the local single-node cluster
// (test/e2e/cluster), prints how to reach it, and tears it down on SIGINT or
// SIGTERM. As root, from the repository:
//
//	test/e2e/cluster/build-k8s.sh
//	go run ./test/e2e/cluster/localcluster -bin ~/.cache/csi-qcow2-e2e/k8s-v1.37.2/bin -image bin/csi-qcow2-image.tar
//
// -image may repeat; the tool image (the pod sandbox) is always imported.
// -sidecars DIR (build-sidecars.sh prints it) packs and imports the CSI
// sidecars' images and prints the chart values that name them.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/csi-qcow2/csi-qcow2/test/e2e/cluster"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(s string) error { *l = append(*l, s); return nil }

func main() {
	bin := flag.String("bin", os.Getenv("CSI_QCOW2_E2E_BIN"), "directory of kube-apiserver, kube-controller-manager, kube-scheduler and kubelet (build-k8s.sh prints it)")
	goBin := flag.String("go", "go", "the go command, to build the tool image")
	sidecars := flag.String("sidecars", "", "directory of the CSI sidecars (build-sidecars.sh prints it): import their images")
	var images list
	flag.Var(&images, "image", "an image archive to import into containerd (repeatable)")
	sweep := flag.String("sweep", "", "tear down what the cluster with this root left when its harness was killed, and exit")
	flag.Parse()
	if *sweep != "" {
		if err := cluster.SweepRoot(*sweep, os.Stderr); err != nil {
			fmt.Fprintln(os.Stderr, "localcluster:", err)
			os.Exit(1)
		}
		return
	}
	if *bin == "" {
		fmt.Fprintln(os.Stderr, "localcluster: -bin is required (test/e2e/cluster/build-k8s.sh prints it)")
		os.Exit(2)
	}
	if err := run(*bin, *goBin, *sidecars, images); err != nil {
		fmt.Fprintln(os.Stderr, "localcluster:", err)
		os.Exit(1)
	}
}

func run(bin, goBin, sidecars string, images []string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	dir, err := os.MkdirTemp("", "csi-qcow2-e2e-tool-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	tool, err := cluster.BuildToolImage(ctx, goBin, dir)
	if err != nil {
		return err
	}
	var sets []string
	if sidecars != "" {
		refs, archives, err := cluster.SidecarImages(ctx, sidecars, dir)
		if err != nil {
			return err
		}
		images = append(images, archives...)
		for _, s := range cluster.Sidecars {
			sets = append(sets, fmt.Sprintf("--set %s.image=%s", s.Value, refs[s.Value]))
		}
	}
	c, err := cluster.Start(ctx, cluster.Config{BinDir: bin, KeepLogs: true, Images: append([]string{tool}, images...)})
	if err != nil {
		return err
	}
	// Imported: the archives go now, so that a SIGKILL later, which no
	// defer outlives, leaves only the root for -sweep.
	if err := os.RemoveAll(dir); err != nil {
		return errors.Join(err, c.Stop())
	}
	fmt.Printf("export KUBECONFIG=%s\n", c.Kubeconfig)
	fmt.Printf("# ctr -a %s -n k8s.io images ls\n", c.ContainerdSocket)
	if len(sets) > 0 {
		fmt.Printf("# sidecar images: %s\n", strings.Join(sets, " "))
	}
	fmt.Printf("# logs in %s/logs (kept after teardown); kubelet root %s/kubelet; SIGINT or SIGTERM (pid %d) tears down\n", c.Root, c.Root, os.Getpid())
	<-ctx.Done()
	return c.Stop()
}
