// Package examples_test decodes every manifest under deploy/examples
// strictly into the Go types of its API: a misspelled or misplaced field
// fails the test, as kubectl's server-side field validation would.
//
// Kubernetes kinds: k8s.io/api v0.37.0 (client-go's scheme). VolumeSnapshot:
// github.com/kubernetes-csi/external-snapshotter/client/v8 v8.7.0. KubeVirt:
// kubevirt.io/api v1.9.0. CDI: kubevirt.io/containerized-data-importer-api
// v1.66.0.
package examples_test

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	snapshotv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	kubevirtv1 "kubevirt.io/api/core/v1"
	kvsnapshotv1beta1 "kubevirt.io/api/snapshot/v1beta1"
	cdiv1beta1 "kubevirt.io/containerized-data-importer-api/pkg/apis/core/v1beta1"
)

const examplesDir = "../../deploy/examples"

// The classes deploy/kubernetes/base defines; examples name no others.
var (
	storageClasses  = map[string]bool{"csi-qcow2": true, "csi-qcow2-golden-example": true}
	snapshotClasses = map[string]bool{"csi-qcow2-external": true, "csi-qcow2-internal": true}
)

func newDecoder(t *testing.T) runtime.Decoder {
	t.Helper()
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		clientgoscheme.AddToScheme,
		snapshotv1.AddToScheme,
		kubevirtv1.AddToScheme,
		kvsnapshotv1beta1.AddToScheme,
		cdiv1beta1.AddToScheme,
	} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	return json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme, scheme,
		json.SerializerOptions{Yaml: true, Strict: true})
}

// decodeAll decodes every document of a YAML stream strictly; empty
// documents (comments only) are skipped.
func decodeAll(dec runtime.Decoder, data []byte) ([]runtime.Object, error) {
	r := utilyaml.NewYAMLReader(bufioReader(data))
	var objs []runtime.Object
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return objs, err
		}
		if isBlank(doc) {
			continue
		}
		obj, _, err := dec.Decode(doc, nil, nil)
		if err != nil {
			return objs, err
		}
		objs = append(objs, obj)
	}
}

func isBlank(doc []byte) bool {
	for _, line := range strings.Split(string(doc), "\n") {
		line = strings.TrimSpace(line)
		if line != "" && !strings.HasPrefix(line, "#") && line != "---" {
			return false
		}
	}
	return true
}

func TestExamplesDecodeStrictly(t *testing.T) {
	dec := newDecoder(t)
	var files []string
	err := filepath.WalkDir(examplesDir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && (strings.HasSuffix(path, ".yaml") || strings.HasSuffix(path, ".yml")) {
			files = append(files, path)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 10 {
		t.Fatalf("found %d manifests under %s, expected the examples", len(files), examplesDir)
	}
	kinds := map[string]bool{}
	for _, f := range files {
		rel, _ := filepath.Rel(examplesDir, f)
		t.Run(rel, func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.HasPrefix(data, []byte("#")) {
				t.Errorf("%s does not start with a comment saying what it shows", rel)
			}
			objs, err := decodeAll(dec, data)
			if err != nil {
				t.Fatalf("%s: %v", rel, err)
			}
			if len(objs) == 0 {
				t.Fatalf("%s holds no object", rel)
			}
			for _, o := range objs {
				gvk := o.GetObjectKind().GroupVersionKind()
				kinds[gvk.Kind] = true
				if g := gvk.Group; strings.HasSuffix(g, "kubevirt.io") && !bytes.Contains(data, []byte("kubevirt.io/api v1.9.0")) &&
					!bytes.Contains(data, []byte("containerized-data-importer-api v1.66.0")) {
					t.Errorf("%s: %s: no comment naming the API version it was checked against", rel, gvk)
				}
				checkClasses(t, rel, o)
			}
		})
	}
	for _, k := range []string{"PersistentVolumeClaim", "Pod", "VolumeSnapshot", "DataVolume", "DataSource",
		"DataImportCron", "StorageProfile", "VirtualMachine", "VirtualMachineSnapshot"} {
		if !kinds[k] {
			t.Errorf("no example of a %s", k)
		}
	}
}

// checkClasses fails on a StorageClass or VolumeSnapshotClass name that
// the deployment does not define.
func checkClasses(t *testing.T, file string, o runtime.Object) {
	t.Helper()
	sc := func(what string, name *string) {
		if name != nil && !storageClasses[*name] {
			t.Errorf("%s: %s names StorageClass %q", file, what, *name)
		}
	}
	switch o := o.(type) {
	case *corev1.PersistentVolumeClaim:
		sc("PersistentVolumeClaim "+o.Name, o.Spec.StorageClassName)
	case *snapshotv1.VolumeSnapshot:
		if n := o.Spec.VolumeSnapshotClassName; n == nil || !snapshotClasses[*n] {
			t.Errorf("%s: VolumeSnapshot %s names no VolumeSnapshotClass of the driver", file, o.Name)
		}
	case *cdiv1beta1.DataVolume:
		if o.Spec.Storage != nil {
			sc("DataVolume "+o.Name, o.Spec.Storage.StorageClassName)
		}
	case *cdiv1beta1.DataImportCron:
		if s := o.Spec.Template.Spec.Storage; s != nil {
			sc("DataImportCron "+o.Name, s.StorageClassName)
		}
	case *cdiv1beta1.StorageProfile:
		sc("StorageProfile", &o.Name)
		if n := o.Spec.SnapshotClass; n != nil && !snapshotClasses[*n] {
			t.Errorf("%s: StorageProfile names VolumeSnapshotClass %q", file, *n)
		}
	case *kubevirtv1.VirtualMachine:
		for _, d := range o.Spec.DataVolumeTemplates {
			if d.Spec.Storage != nil {
				sc("dataVolumeTemplate "+d.Name, d.Spec.Storage.StorageClassName)
			}
		}
	}
}

// TestStrictDecodingCatchesMistakes shows that the decoding above fails
// on a misspelled field, a field in the wrong place and an unknown kind,
// for each API the examples use.
func TestStrictDecodingCatchesMistakes(t *testing.T) {
	dec := newDecoder(t)
	cases := []struct {
		name, manifest string
		ok             bool
	}{
		{"good PVC", `
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: a}
spec:
  storageClassName: csi-qcow2
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
`, true},
		{"misspelled PVC field", `
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: a}
spec:
  storageClass: csi-qcow2
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
`, false},
		{"Pod volumeDevice field misplaced", `
apiVersion: v1
kind: Pod
metadata: {name: a}
spec:
  containers:
  - name: c
    image: busybox
    volumeDevices: [{name: raw, mountPath: /dev/xvda}]
`, false},
		{"misspelled VolumeSnapshot field", `
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata: {name: a}
spec:
  volumeSnapshotClass: csi-qcow2-external
  source: {persistentVolumeClaimName: data}
`, false},
		{"misspelled StorageProfile field", `
apiVersion: cdi.kubevirt.io/v1beta1
kind: StorageProfile
metadata: {name: csi-qcow2}
spec:
  cloneStrategy: copy
  dataImportCronFormat: pvc
`, false},
		{"misspelled VirtualMachine field", `
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {name: a}
spec:
  updateVolumeStrategy: Migration
  template: {spec: {domain: {devices: {}}}}
`, false},
		{"good VirtualMachine", `
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {name: a}
spec:
  updateVolumesStrategy: Migration
  template: {spec: {domain: {devices: {}}}}
`, true},
		{"misspelled VirtualMachineSnapshot field", `
apiVersion: snapshot.kubevirt.io/v1beta1
kind: VirtualMachineSnapshot
metadata: {name: a}
spec:
  source: {apiGroup: kubevirt.io, kind: VirtualMachine, name: vm}
  deadline: 1m
`, false},
		{"unknown kind", `
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolumeTemplate
metadata: {name: a}
`, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := decodeAll(dec, []byte(c.manifest))
			switch {
			case c.ok && err != nil:
				t.Errorf("refused: %v", err)
			case !c.ok && err == nil:
				t.Errorf("accepted")
			case !c.ok:
				t.Logf("refused as it should be: %v", err)
			}
		})
	}
}

func bufioReader(b []byte) *bufio.Reader { return bufio.NewReader(bytes.NewReader(b)) }
