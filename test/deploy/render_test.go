// Package deploy_test checks the Kubernetes deployment: the kustomize
// manifests under deploy/kubernetes and the Helm chart charts/csi-qcow2.
// Everything runs in-process (krusty, Helm's action and lint packages);
// no cluster, no network, no root.
package deploy_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"runtime"
	"testing"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	releasev1 "helm.sh/helm/v4/pkg/release/v1"
	apiextv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// repoRoot is the repository's root, two levels above this file.
func repoRoot(t testing.TB) string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("no caller information")
	}
	return filepath.Join(filepath.Dir(file), "..", "..")
}

const namespace = "csi-qcow2"

// object is one decoded manifest document.
type object struct {
	obj  k8sruntime.Object
	kind string
	name string // namespace/name or name
}

func (o object) key() string { return o.kind + " " + o.name }

// decoder decodes strictly (unknown and duplicate fields fail) into the
// types of client-go's scheme, the VolumeSnapshot API and
// CustomResourceDefinition.
var decoder = func() k8sruntime.Decoder {
	s := k8sruntime.NewScheme()
	for _, add := range []func(*k8sruntime.Scheme) error{scheme.AddToScheme, snapv1.AddToScheme, apiextv1.AddToScheme} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return serializer.NewCodecFactory(s, serializer.EnableStrict).UniversalDeserializer()
}()

// decodeAll splits a multi-document YAML stream and decodes each
// document strictly; a document that is not a known type fails.
func decodeAll(t testing.TB, what string, stream []byte) []object {
	t.Helper()
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(stream)))
	var out []object
	seen := map[string]bool{}
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		obj, gvk, err := decoder.Decode(doc, nil, nil)
		if err != nil {
			t.Fatalf("%s: strict decoding failed: %v\n%s", what, err, doc)
		}
		m, err := metaOf(obj)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		name := m.GetName()
		if m.GetNamespace() != "" {
			name = m.GetNamespace() + "/" + name
		}
		o := object{obj: obj, kind: gvk.Kind, name: name}
		if seen[o.key()] {
			t.Fatalf("%s: %s twice", what, o.key())
		}
		seen[o.key()] = true
		out = append(out, o)
	}
	if len(out) == 0 {
		t.Fatalf("%s: no objects", what)
	}
	return out
}

func stripComments(doc []byte) []byte {
	var b bytes.Buffer
	for _, line := range bytes.Split(doc, []byte("\n")) {
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] != '#' {
			b.Write(line)
			b.WriteByte('\n')
		}
	}
	return b.Bytes()
}

func metaOf(obj k8sruntime.Object) (metav1.Object, error) {
	m, ok := obj.(metav1.Object)
	if !ok {
		return nil, fmt.Errorf("%T has no object metadata", obj)
	}
	return m, nil
}

// kustomize builds deploy/kubernetes/<dir> with krusty, as
// `kubectl apply -k` would.
func kustomize(t testing.TB, dir string) []object {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), filepath.Join(repoRoot(t), "deploy", "kubernetes", dir))
	if err != nil {
		t.Fatalf("kustomize %s: %v", dir, err)
	}
	y, err := m.AsYaml()
	if err != nil {
		t.Fatalf("kustomize %s: %v", dir, err)
	}
	return decodeAll(t, "kustomize "+dir, y)
}

// helmRender renders the chart as `helm template` does (a client-only dry
// run of an install) into namespace csi-qcow2, and returns the objects
// and the NOTES.txt text.
func helmRender(t testing.TB, vals map[string]any) ([]object, string) {
	t.Helper()
	ch, err := loader.Load(filepath.Join(repoRoot(t), "charts", "csi-qcow2"))
	if err != nil {
		t.Fatal(err)
	}
	inst := action.NewInstall(action.NewConfiguration())
	inst.DryRunStrategy = action.DryRunClient
	inst.Replace = true
	inst.ReleaseName = "csi-qcow2"
	inst.Namespace = namespace
	r, err := inst.Run(ch, vals)
	if err != nil {
		t.Fatalf("helm template with %v: %v", vals, err)
	}
	rel, ok := r.(*releasev1.Release)
	if !ok {
		t.Fatalf("helm install returned %T", r)
	}
	return decodeAll(t, fmt.Sprintf("helm template %v", vals), []byte(rel.Manifest)), rel.Info.Notes
}

// allOn turns on every optional part of the chart.
var allOn = map[string]any{
	"namespace":          map[string]any{"create": true},
	"snapshotController": map[string]any{"enabled": true},
}

func TestKustomizeDecodesStrictly(t *testing.T) {
	for _, dir := range []string{"base", "overlays/snapshot-controller"} {
		objs := kustomize(t, dir)
		t.Logf("%s: %d objects", dir, len(objs))
	}
}

func TestHelmRendersAndDecodesStrictly(t *testing.T) {
	for _, vals := range []map[string]any{nil, allOn, {"registrar": map[string]any{"enabled": false}}} {
		objs, notes := helmRender(t, vals)
		if notes == "" {
			t.Errorf("helm template %v: no NOTES.txt", vals)
		}
		t.Logf("%v: %d objects", vals, len(objs))
	}
}
