package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"path/filepath"
	"time"

	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/loader"
	"helm.sh/helm/v4/pkg/kube"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensions "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// SnapshotCRDModule is the external-snapshotter client module whose
// config/crd holds the VolumeSnapshot CRDs the chart's snapshot-controller
// and csi-snapshotter are built for (the version docs/operations.md names).
const SnapshotCRDModule = "github.com/kubernetes-csi/external-snapshotter/client/v8@v8.7.0"

// InstallSnapshotCRDs applies external-snapshotter's CRDs, as
// `kubectl kustomize .../client/config/crd?ref=v8.7.0 | kubectl apply -f -`
// does (docs/operations.md), from the module in the Go module cache, and
// waits until each is Established.
func (c *Cluster) InstallSnapshotCRDs(ctx context.Context, goBin string) error {
	out, err := exec.CommandContext(ctx, goBin, "mod", "download", "-json", SnapshotCRDModule).Output()
	if err != nil {
		return fmt.Errorf("go mod download %s: %w", SnapshotCRDModule, err)
	}
	var mod struct{ Dir string }
	if err := json.Unmarshal(out, &mod); err != nil || mod.Dir == "" {
		return fmt.Errorf("go mod download %s: no directory (%v)", SnapshotCRDModule, err)
	}
	res, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), filepath.Join(mod.Dir, "config", "crd"))
	if err != nil {
		return err
	}
	yml, err := res.AsYaml()
	if err != nil {
		return err
	}
	rc, err := c.restConfig()
	if err != nil {
		return err
	}
	cs, err := apiextensions.NewForConfig(rc)
	if err != nil {
		return err
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(yml), 4096)
	var names []string
	for {
		var crd apiextensionsv1.CustomResourceDefinition
		if err := dec.Decode(&crd); err == io.EOF {
			break
		} else if err != nil {
			return err
		}
		if _, err := cs.ApiextensionsV1().CustomResourceDefinitions().Create(ctx, &crd, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create CRD %s: %w", crd.Name, err)
		}
		names = append(names, crd.Name)
	}
	return c.poll(ctx, fmt.Sprintf("%d snapshot CRDs Established", len(names)), time.Minute, func() (bool, error) {
		for _, n := range names {
			crd, err := cs.ApiextensionsV1().CustomResourceDefinitions().Get(ctx, n, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			established := false
			for _, cond := range crd.Status.Conditions {
				if cond.Type == apiextensionsv1.Established && cond.Status == apiextensionsv1.ConditionTrue {
					established = true
				}
			}
			if !established {
				return false, fmt.Errorf("%s not Established yet", n)
			}
		}
		return true, nil
	})
}

// Chart is a Helm install of the project's chart into the cluster.
type Chart struct {
	// Dir is the chart's directory (charts/csi-qcow2).
	Dir string
	// Release and Namespace name the release; InstallChart makes the
	// namespace.
	Release, Namespace string
	// Values are the chart values to set; see ChartValues.
	Values map[string]any
	// Timeout bounds the wait for every object to be ready.
	Timeout time.Duration
}

// InstallChart installs the chart as `helm install --wait` does and waits
// until its DaemonSet and Deployments are ready.
func (c *Cluster) InstallChart(ctx context.Context, ch Chart) error {
	chrt, err := loader.Load(ch.Dir)
	if err != nil {
		return err
	}
	cfg, err := c.helmConfig(ch.Namespace)
	if err != nil {
		return err
	}
	c.lastNamespaces[ch.Namespace] = true
	// As docs/operations.md asks: the namespace exists, labelled for the
	// node plugin's privileged pods, before Helm keeps its release there.
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ch.Namespace,
		Labels: map[string]string{"pod-security.kubernetes.io/enforce": "privileged"}}}
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	inst := action.NewInstall(cfg)
	inst.ReleaseName, inst.Namespace = ch.Release, ch.Namespace
	inst.WaitStrategy = kube.StatusWatcherStrategy
	inst.Timeout = ch.Timeout
	start := time.Now()
	if _, err := inst.RunWithContext(ctx, chrt, ch.Values); err != nil {
		return fmt.Errorf("helm install %s: %w", ch.Release, err)
	}
	c.logf("helm install %s into %s: ready after %.1f s", ch.Release, ch.Namespace, time.Since(start).Seconds())
	return nil
}

func (c *Cluster) helmConfig(namespace string) (*action.Configuration, error) {
	getter := genericclioptions.NewConfigFlags(false)
	getter.KubeConfig = &c.Kubeconfig
	getter.Namespace = &namespace
	cfg := action.NewConfiguration()
	cfg.SetLogger(slog.NewTextHandler(c.cfg.Log, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if err := cfg.Init(getter, namespace, "secret"); err != nil {
		return nil, err
	}
	return cfg, nil
}
