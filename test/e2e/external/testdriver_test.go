package external

import (
	"errors"
	"io"
	"os"
	"reflect"
	"testing"

	"k8s.io/apimachinery/pkg/util/yaml"

	"github.com/csi-qcow2/csi-qcow2/pkg/driver"
)

type testDriverDef struct {
	StorageClass  struct{ FromExistingClassName string }
	SnapshotClass struct{ FromExistingClassName string }
	DriverInfo    struct {
		Name            string
		SupportedFsType map[string]struct{}
		TopologyKeys    []string
		Capabilities    map[string]bool
	}
}

// decodeAll decodes every YAML document of a file into a new T.
func decodeAll[T any](t *testing.T, path string) []T {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d := yaml.NewYAMLOrJSONDecoder(f, 4096)
	var all []T
	for {
		var v T
		if err := d.Decode(&v); errors.Is(err, io.EOF) {
			return all
		} else if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		all = append(all, v)
	}
}

// TestTestDriverFiles checks the testdriver files against the driver and
// the classes the deployment installs.
func TestTestDriverFiles(t *testing.T) {
	type class struct {
		Metadata    struct{ Name string }
		Provisioner string
		Driver      string
	}
	provisioners := map[string]string{}
	for _, c := range decodeAll[class](t, "../../../deploy/kubernetes/base/storageclasses.yaml") {
		provisioners[c.Metadata.Name] = c.Provisioner
	}
	snapshotters := map[string]string{}
	for _, c := range decodeAll[class](t, "../../../deploy/kubernetes/base/snapshotclasses.yaml") {
		snapshotters[c.Metadata.Name] = c.Driver
	}
	main := decodeAll[testDriverDef](t, "../testdriver.yaml")[0]
	internal := decodeAll[testDriverDef](t, "../testdriver-internal-snapshots.yaml")[0]
	for name, d := range map[string]testDriverDef{"testdriver.yaml": main, "testdriver-internal-snapshots.yaml": internal} {
		info := d.DriverInfo
		if info.Name != driver.DriverName {
			t.Errorf("%s: name %q", name, info.Name)
		}
		if !reflect.DeepEqual(info.TopologyKeys, []string{driver.TopologyKey}) {
			t.Errorf("%s: topology keys %q", name, info.TopologyKeys)
		}
		for fs := range info.SupportedFsType {
			if fs != "" && fs != "ext4" && fs != "xfs" {
				t.Errorf("%s: fs type %q, which the driver refuses", name, fs)
			}
		}
		for _, c := range []string{"RWX", "capReadOnlyMany", "multiplePVsSameID", "volumeLimits"} {
			if info.Capabilities[c] {
				t.Errorf("%s: claims %s", name, c)
			}
		}
		if p := provisioners[d.StorageClass.FromExistingClassName]; p != driver.DriverName {
			t.Errorf("%s: storage class %q: provisioner %q", name, d.StorageClass.FromExistingClassName, p)
		}
		if s := snapshotters[d.SnapshotClass.FromExistingClassName]; s != driver.DriverName {
			t.Errorf("%s: snapshot class %q: driver %q", name, d.SnapshotClass.FromExistingClassName, s)
		}
	}
	internal.SnapshotClass = main.SnapshotClass
	if !reflect.DeepEqual(main, internal) {
		t.Errorf("the two files differ in more than the snapshot class")
	}
}
