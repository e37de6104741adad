package deploy_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"helm.sh/helm/v4/pkg/chart/v2/lint"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
)

// helm lint, with the defaults and with every optional part on: no
// warning, no error (info messages, such as "icon is recommended", are
// logged).
func TestHelmLint(t *testing.T) {
	dir := filepath.Join(repoRoot(t), "charts", "csi-qcow2")
	for _, vals := range []map[string]any{nil, allOn} {
		res := lint.RunAll(dir, vals, namespace)
		for _, m := range res.Messages {
			if m.Severity < support.WarningSev {
				t.Logf("helm lint %v: %s", vals, m.Error())
				continue
			}
			t.Errorf("helm lint %v: %s", vals, m.Error())
		}
	}
}

// The schema refuses what it does not know, at every level.
func TestHelmSchemaIsStrict(t *testing.T) {
	for _, vals := range []map[string]any{
		{"unknown": true},
		{"driver": map[string]any{"imag": "x"}},
		{"driver": map[string]any{"image": "ghcr.io/csi-qcow2/csi-qcow2:latest"}},
		{"snapshotController": map[string]any{"enabled": "yes"}},
		{"node": map[string]any{"tolerations": []any{map[string]any{"operator": "Exists", "effekt": "NoSchedule"}}}},
	} {
		res := lint.RunAll(filepath.Join(repoRoot(t), "charts", "csi-qcow2"), vals, namespace)
		if res.HighestSeverity < support.ErrorSev {
			t.Errorf("values %v passed the schema", vals)
		}
	}
}

// helmOnlyLabels are the labels the chart adds to every object's own
// metadata and kustomize does not: which tool manages it, and which
// chart version made it. Only these are dropped before comparing.
var helmOnlyLabels = []string{"helm.sh/chart", "app.kubernetes.io/managed-by"}

// normalize turns an object into plain maps with the Helm-only labels
// removed from metadata.labels (pod templates and selectors carry none).
func normalize(t *testing.T, o object) map[string]any {
	t.Helper()
	u, err := k8sruntime.DefaultUnstructuredConverter.ToUnstructured(o.obj)
	if err != nil {
		t.Fatal(err)
	}
	if md, ok := u["metadata"].(map[string]any); ok {
		if labels, ok := md["labels"].(map[string]any); ok {
			for _, l := range helmOnlyLabels {
				delete(labels, l)
			}
		}
	}
	return u
}

func byKey(objs []object) map[string]object {
	m := map[string]object{}
	for _, o := range objs {
		m[o.key()] = o
	}
	return m
}

// compareObjects says which objects one side has and the other lacks,
// and how equal-named ones differ.
func compareObjects(t *testing.T, what string, chart, kust []object) {
	t.Helper()
	c, k := byKey(chart), byKey(kust)
	for key, ko := range k {
		co, ok := c[key]
		if !ok {
			t.Errorf("%s: the chart lacks %s", what, key)
			continue
		}
		if d := cmp.Diff(normalize(t, ko), normalize(t, co)); d != "" {
			t.Errorf("%s: %s differs (-kustomize +chart):\n%s", what, key, d)
		}
	}
	for key := range c {
		if _, ok := k[key]; !ok {
			t.Errorf("%s: only the chart has %s", what, key)
		}
	}
}

// The chart with its defaults renders the kustomize base's objects (but
// the Namespace, which Helm expects to exist: namespace.create renders
// it), and with every part on the overlay's.
func TestChartMatchesKustomize(t *testing.T) {
	base := kustomize(t, "base")
	var baseNoNS []object
	for _, o := range base {
		if o.kind != "Namespace" {
			baseNoNS = append(baseNoNS, o)
		}
	}
	def, _ := helmRender(t, nil)
	compareObjects(t, "defaults vs base", def, baseNoNS)
	withNS, _ := helmRender(t, map[string]any{"namespace": map[string]any{"create": true}})
	compareObjects(t, "namespace.create vs base", withNS, base)
	all, _ := helmRender(t, allOn)
	compareObjects(t, "all on vs overlays/snapshot-controller", all, kustomize(t, "overlays/snapshot-controller"))
}

// NOTES.txt tells how to label the namespace when the chart did not make it.
func TestChartNotes(t *testing.T) {
	_, notes := helmRender(t, nil)
	if !strings.Contains(notes, "pod-security.kubernetes.io/enforce=privileged") {
		t.Errorf("NOTES.txt does not say how to allow privileged pods:\n%s", notes)
	}
}
