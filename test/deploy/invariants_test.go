package deploy_test

import (
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"

	"github.com/csi-qcow2/csi-qcow2/pkg/driver"
)

// Every way the deployment is rendered: the invariants hold in each.
func renderings(t *testing.T) map[string][]object {
	def, _ := helmRender(t, nil)
	all, _ := helmRender(t, allOn)
	return map[string][]object{
		"kustomize base":                kustomize(t, "base"),
		"kustomize snapshot-controller": kustomize(t, "overlays/snapshot-controller"),
		"helm defaults":                 def,
		"helm all on":                   all,
	}
}

func podSpecs(objs []object) map[string]*corev1.PodSpec {
	m := map[string]*corev1.PodSpec{}
	for _, o := range objs {
		switch x := o.obj.(type) {
		case *appsv1.DaemonSet:
			m[o.key()] = &x.Spec.Template.Spec
		case *appsv1.Deployment:
			m[o.key()] = &x.Spec.Template.Spec
		}
	}
	return m
}

func container(t *testing.T, p *corev1.PodSpec, name string) *corev1.Container {
	t.Helper()
	for i := range p.Containers {
		if p.Containers[i].Name == name {
			return &p.Containers[i]
		}
	}
	t.Fatalf("no container %s", name)
	return nil
}

// flagValue is the value of --name=value in args, and whether it is set
// (a bare --name is "true").
func flagValue(args []string, name string) (string, bool) {
	for _, a := range args {
		if a == "--"+name {
			return "true", true
		}
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
	}
	return "", false
}

// releasedTag is an exact release: vX.Y.Z, no latest, no bare digest.
var releasedTag = regexp.MustCompile(`^(ghcr\.io/csi-qcow2|registry\.k8s\.io/sig-storage)/[a-z0-9-]+:v[0-9]+\.[0-9]+\.[0-9]+$`)

func TestImagesArePinned(t *testing.T) {
	for what, objs := range renderings(t) {
		for key, p := range podSpecs(objs) {
			for _, c := range append(slices.Clone(p.InitContainers), p.Containers...) {
				if !releasedTag.MatchString(c.Image) {
					t.Errorf("%s: %s container %s: image %q is not an exact release tag", what, key, c.Name, c.Image)
				}
			}
		}
	}
}

// The sidecars' flags agree with what the driver advertises
// (driver.AdvertisedCapabilities, the lists its gRPC services answer with).
func TestSidecarsMatchCapabilities(t *testing.T) {
	caps := driver.AdvertisedCapabilities()
	ctl := func(c csi.ControllerServiceCapability_RPC_Type) bool { return slices.Contains(caps.Controller, c) }
	// The provisioner and snapshotter need the controller RPCs they call.
	for _, need := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,   // csi-provisioner
		csi.ControllerServiceCapability_RPC_GET_CAPACITY,           // --enable-capacity
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT, // csi-snapshotter
	} {
		if !ctl(need) {
			t.Errorf("the driver does not advertise %v, which the sidecars use", need)
		}
	}
	// The central resizer runs its trivial mode only with these: a
	// controller service, no controller EXPAND_VOLUME, node EXPAND_VOLUME
	// (external-resizer v2.2.1 pkg/resizer NewResizerFromClient).
	if !slices.Contains(caps.Plugin, csi.PluginCapability_Service_CONTROLLER_SERVICE) {
		t.Error("no CONTROLLER_SERVICE: the external-resizer would refuse the driver")
	}
	if ctl(csi.ControllerServiceCapability_RPC_EXPAND_VOLUME) {
		t.Error("controller EXPAND_VOLUME is advertised: the central resizer would call ControllerExpandVolume on a driver that holds no volume")
	}
	if !slices.Contains(caps.Node, csi.NodeServiceCapability_RPC_EXPAND_VOLUME) {
		t.Error("no node EXPAND_VOLUME: the resizer has no trivial mode and kubelet would not grow volumes")
	}
	// No ControllerPublishVolume: attachRequired false, and the sidecars'
	// RBAC has no volumeattachments.
	if ctl(csi.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME) {
		t.Error("PUBLISH_UNPUBLISH_VOLUME is advertised but the CSIDriver says attachRequired: false")
	}
	// Topology: every volume is on one node, so the provisioner must be
	// told strict topology and run per node.
	if !slices.Contains(caps.Plugin, csi.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS) {
		t.Error("no VOLUME_ACCESSIBILITY_CONSTRAINTS, but volumes are node-local")
	}
	for what, objs := range renderings(t) {
		ds := podSpecs(objs)["DaemonSet "+namespace+"/csi-qcow2-node"]
		if ds == nil {
			t.Fatalf("%s: no node DaemonSet", what)
		}
		prov := container(t, ds, "csi-provisioner").Args
		for _, f := range []string{"node-deployment", "strict-topology", "enable-capacity", "extra-create-metadata"} {
			if v, ok := flagValue(prov, f); !ok || v != "true" {
				t.Errorf("%s: csi-provisioner lacks --%s", what, f)
			}
		}
		if v, _ := flagValue(prov, "capacity-ownerref-level"); v != "1" {
			t.Errorf("%s: csi-provisioner --capacity-ownerref-level=%q, want 1 (the DaemonSet above the pod)", what, v)
		}
		snap := container(t, ds, "csi-snapshotter").Args
		if v, _ := flagValue(snap, "node-deployment"); v != "true" {
			t.Errorf("%s: csi-snapshotter lacks --node-deployment", what)
		}
		if v, ok := flagValue(snap, "leader-election"); ok && v != "false" {
			t.Errorf("%s: csi-snapshotter has leader election, which --node-deployment refuses", what)
		}
		plugin := container(t, ds, "csi-qcow2")
		if v, _ := flagValue(plugin.Args, "node-id"); v != "$(NODE_NAME)" {
			t.Errorf("%s: the plugin's --node-id is %q", what, v)
		}
		// The CSIDriver says no attach (no PUBLISH_UNPUBLISH_VOLUME).
		found := false
		for _, o := range objs {
			if d, ok := o.obj.(*storagev1.CSIDriver); ok && d.Name == driver.DriverName {
				found = true
				if d.Spec.AttachRequired == nil || *d.Spec.AttachRequired {
					t.Errorf("%s: CSIDriver %s needs attach", what, d.Name)
				}
			}
		}
		if !found {
			t.Errorf("%s: no CSIDriver %s", what, driver.DriverName)
		}
	}
}

// Sidecars that act per node get NODE_NAME from spec.nodeName; the
// provisioner gets NAMESPACE and POD_NAME for the capacity owner.
func TestNodeSidecarsEnv(t *testing.T) {
	need := map[string][]string{
		"csi-qcow2":       {"NODE_NAME"},
		"csi-provisioner": {"NODE_NAME", "NAMESPACE", "POD_NAME"},
		"csi-snapshotter": {"NODE_NAME"},
	}
	field := map[string]string{"NODE_NAME": "spec.nodeName", "NAMESPACE": "metadata.namespace", "POD_NAME": "metadata.name"}
	for what, objs := range renderings(t) {
		ds := podSpecs(objs)["DaemonSet "+namespace+"/csi-qcow2-node"]
		for name, vars := range need {
			c := container(t, ds, name)
			for _, v := range vars {
				ok := false
				for _, e := range c.Env {
					if e.Name == v && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == field[v] {
						ok = true
					}
				}
				if !ok {
					t.Errorf("%s: %s lacks %s from %s", what, name, v, field[v])
				}
			}
		}
	}
}

// hostPathOf maps a path inside container c to the host through c's
// volume mounts (the longest mount prefix), or "" when it is not on a
// hostPath volume.
func hostPathOf(p *corev1.PodSpec, c *corev1.Container, path string) string {
	best := ""
	var host string
	for _, m := range c.VolumeMounts {
		if (path == m.MountPath || strings.HasPrefix(path, m.MountPath+"/")) && len(m.MountPath) > len(best) {
			for _, v := range p.Volumes {
				if v.Name == m.Name && v.HostPath != nil {
					best = m.MountPath
					host = filepath.Join(v.HostPath.Path, strings.TrimPrefix(path, m.MountPath))
				}
			}
		}
	}
	return host
}

// The plugin's socket, the registrar's --csi-address and the path the
// kubelet is told (--kubelet-registration-path) are one file on the host,
// under the kubelet's plugins directory, and every sidecar dials it.
func TestSocketPathsAgree(t *testing.T) {
	for what, objs := range renderings(t) {
		ds := podSpecs(objs)["DaemonSet "+namespace+"/csi-qcow2-node"]
		plugin := container(t, ds, "csi-qcow2")
		ep, _ := flagValue(plugin.Args, "endpoint")
		sock := strings.TrimPrefix(ep, "unix://")
		hostSock := hostPathOf(ds, plugin, sock)
		if want := "/var/lib/kubelet/plugins/" + driver.DriverName + "/csi.sock"; hostSock != want {
			t.Errorf("%s: the plugin's socket %s is %q on the host, want %s", what, sock, hostSock, want)
		}
		reg := container(t, ds, "node-driver-registrar")
		if v, _ := flagValue(reg.Args, "kubelet-registration-path"); v != hostSock {
			t.Errorf("%s: --kubelet-registration-path=%s, the socket is %s on the host", what, v, hostSock)
		}
		if hostPathOf(ds, reg, "/registration") != "/var/lib/kubelet/plugins_registry" {
			t.Errorf("%s: the registrar's /registration is not the kubelet's plugins_registry", what)
		}
		for _, name := range []string{"node-driver-registrar", "csi-provisioner", "csi-snapshotter", "liveness-probe"} {
			c := container(t, ds, name)
			addr, _ := flagValue(c.Args, "csi-address")
			if h := hostPathOf(ds, c, addr); h != hostSock {
				t.Errorf("%s: %s dials %s (%q on the host), not the plugin's socket %s", what, name, addr, h, hostSock)
			}
		}
		// The kubelet's directory reaches the plugin with Bidirectional
		// propagation at the same path as on the host.
		ok := false
		for _, m := range plugin.VolumeMounts {
			if m.MountPath == "/var/lib/kubelet" && m.MountPropagation != nil && *m.MountPropagation == corev1.MountPropagationBidirectional &&
				hostPathOf(ds, plugin, "/var/lib/kubelet") == "/var/lib/kubelet" {
				ok = true
			}
		}
		if !ok {
			t.Errorf("%s: the plugin lacks /var/lib/kubelet with Bidirectional propagation", what)
		}
		// The liveness probe's port is the livenessprobe sidecar's.
		lp := container(t, ds, "liveness-probe")
		hp, _ := flagValue(lp.Args, "http-endpoint")
		found := false
		for _, p := range plugin.Ports {
			if p.Name == plugin.LivenessProbe.HTTPGet.Port.String() && hp == fmt.Sprintf(":%d", p.ContainerPort) {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: the plugin's liveness probe does not reach the livenessprobe sidecar at %s", what, hp)
		}
	}
}

// With registrar.enabled=false the driver container registers itself:
// no registrar runs, and the driver is told the host path of its own
// socket and has the kubelet's plugins_registry at its registration dir.
func TestDriverRegistersItselfWithoutRegistrar(t *testing.T) {
	objs, _ := helmRender(t, map[string]any{"registrar": map[string]any{"enabled": false}})
	ds := podSpecs(objs)["DaemonSet "+namespace+"/csi-qcow2-node"]
	for _, c := range ds.Containers {
		if c.Name == "node-driver-registrar" {
			t.Fatal("the registrar runs although disabled")
		}
	}
	plugin := container(t, ds, "csi-qcow2")
	ep, _ := flagValue(plugin.Args, "endpoint")
	hostSock := hostPathOf(ds, plugin, strings.TrimPrefix(ep, "unix://"))
	if v, _ := flagValue(plugin.Args, "kubelet-registration-path"); v != hostSock || hostSock == "" {
		t.Errorf("--kubelet-registration-path=%q, the socket is %q on the host", v, hostSock)
	}
	dir, _ := flagValue(plugin.Args, "kubelet-registration-dir")
	if dir == "" || hostPathOf(ds, plugin, dir) != "/var/lib/kubelet/plugins_registry" {
		t.Errorf("--kubelet-registration-dir=%q is %q on the host, want the kubelet's plugins_registry", dir, hostPathOf(ds, plugin, dir))
	}
}

// rule is one permission: verbs on group/resource.
type rule struct{ group, resource, verb string }

func (r rule) String() string { return r.group + "/" + r.resource + ":" + r.verb }

func rules(group string, resources []string, verbs ...string) []rule {
	var out []rule
	for _, r := range resources {
		for _, v := range verbs {
			out = append(out, rule{group, r, v})
		}
	}
	return out
}

// needs is what each service account's containers use, with where the
// need comes from (the sidecars' sources at the pinned versions and the
// flags the deployment gives them). cluster: ClusterRole; ns: Role in
// the namespace.
type needs struct{ cluster, ns []rule }

func ruleTable() map[string]needs {
	cat := func(rs ...[]rule) []rule { return slices.Concat(rs...) }
	events := rules("", []string{"events"}, "create", "patch") // client-go's event recorder
	return map[string]needs{
		"csi-qcow2-node": {
			cluster: cat(
				// csi-provisioner v6.4.0 (sig-storage-lib-external-provisioner v13):
				// PV informer, create, patch, delete.
				rules("", []string{"persistentvolumes"}, "get", "list", "watch", "create", "patch", "delete"),
				// claim informer; Update for the clone finalizer and the
				// selected-node annotation on reschedule.
				rules("", []string{"persistentvolumeclaims"}, "get", "list", "watch", "update"),
				rules("storage.k8s.io", []string{"storageclasses"}, "get", "list", "watch"),
				// restore from a snapshot: Get; the snapshot finalizer controller: list, watch, update.
				rules("snapshot.storage.k8s.io", []string{"volumesnapshots"}, "get", "list", "watch", "update"),
				// provisioner Get + csi-snapshotter v8.7.0 content informer and updates.
				rules("snapshot.storage.k8s.io", []string{"volumesnapshotcontents"}, "get", "list", "watch", "update", "patch"),
				rules("snapshot.storage.k8s.io", []string{"volumesnapshotcontents/status"}, "update", "patch"),
				rules("snapshot.storage.k8s.io", []string{"volumesnapshotclasses"}, "get", "list", "watch"),
				events,
			),
			ns: cat(
				// --enable-capacity: the namespaced CSIStorageCapacity informer and writes.
				rules("storage.k8s.io", []string{"csistoragecapacities"}, "get", "list", "watch", "create", "update", "patch", "delete"),
				// --capacity-ownerref-level=1: pkg/owner gets the pod only.
				rules("", []string{"pods"}, "get"),
			),
		},
		"csi-qcow2-resizer": {
			// external-resizer v2.2.1, trivial mode, --handle-volume-inuse-error=false.
			cluster: cat(
				rules("", []string{"persistentvolumes"}, "get", "list", "watch", "patch"),
				rules("", []string{"persistentvolumeclaims"}, "get", "list", "watch"),
				rules("", []string{"persistentvolumeclaims/status"}, "patch"),
				events,
			),
		},
		"csi-qcow2-snapshot-controller": {
			// snapshot-controller v8.7.0 with --enable-distributed-snapshotting,
			// group snapshots off.
			cluster: cat(
				rules("", []string{"persistentvolumes"}, "get", "list", "watch"),
				rules("", []string{"persistentvolumeclaims"}, "get", "list", "watch", "update"),
				rules("", []string{"nodes"}, "get", "list", "watch"),
				events,
				rules("snapshot.storage.k8s.io", []string{"volumesnapshotclasses"}, "get", "list", "watch"),
				rules("snapshot.storage.k8s.io", []string{"volumesnapshotcontents"}, "create", "get", "list", "watch", "update", "patch", "delete"),
				rules("snapshot.storage.k8s.io", []string{"volumesnapshotcontents/status"}, "patch"),
				rules("snapshot.storage.k8s.io", []string{"volumesnapshots"}, "get", "list", "watch", "update", "patch"),
				rules("snapshot.storage.k8s.io", []string{"volumesnapshots/status"}, "update", "patch"),
			),
		},
	}
}

func expand(prs []rbacv1.PolicyRule) []rule {
	var out []rule
	for _, pr := range prs {
		for _, g := range pr.APIGroups {
			out = append(out, rules(g, pr.Resources, pr.Verbs...)...)
		}
	}
	return out
}

func ruleSet(rs []rule) []string {
	var s []string
	for _, r := range rs {
		s = append(s, r.String())
	}
	sort.Strings(s)
	return slices.Compact(s)
}

// Each service account is granted exactly what the table says its
// containers use: nothing missing, nothing more, no wildcard.
func TestRBACIsLeast(t *testing.T) {
	table := ruleTable()
	for what, objs := range renderings(t) {
		roles := map[string][]rule{} // kind/name -> rules
		for _, o := range objs {
			switch x := o.obj.(type) {
			case *rbacv1.ClusterRole:
				roles["ClusterRole/"+x.Name] = expand(x.Rules)
			case *rbacv1.Role:
				roles["Role/"+x.Namespace+"/"+x.Name] = expand(x.Rules)
			}
		}
		got := map[string]*needs{}
		for _, o := range objs {
			var subjects []rbacv1.Subject
			var ref rbacv1.RoleRef
			var ns string
			switch x := o.obj.(type) {
			case *rbacv1.ClusterRoleBinding:
				subjects, ref = x.Subjects, x.RoleRef
			case *rbacv1.RoleBinding:
				subjects, ref, ns = x.Subjects, x.RoleRef, x.Namespace
			default:
				continue
			}
			key := ref.Kind + "/" + ref.Name
			if ref.Kind == "Role" {
				key = "Role/" + ns + "/" + ref.Name
			}
			rs, ok := roles[key]
			if !ok {
				t.Errorf("%s: %s binds %s, which is not rendered", what, o.key(), key)
			}
			for _, s := range subjects {
				if s.Kind != "ServiceAccount" || s.Namespace != namespace {
					t.Errorf("%s: %s binds %s %s/%s", what, o.key(), s.Kind, s.Namespace, s.Name)
					continue
				}
				n := got[s.Name]
				if n == nil {
					n = &needs{}
					got[s.Name] = n
				}
				if ref.Kind == "ClusterRole" {
					n.cluster = append(n.cluster, rs...)
				} else {
					n.ns = append(n.ns, rs...)
				}
			}
		}
		// Every pod runs as a service account of the table.
		for key, p := range podSpecs(objs) {
			if _, ok := table[p.ServiceAccountName]; !ok {
				t.Errorf("%s: %s runs as %q, which the table does not know", what, key, p.ServiceAccountName)
			}
		}
		for sa, n := range got {
			want, ok := table[sa]
			if !ok {
				t.Errorf("%s: service account %s is granted rules the table does not know", what, sa)
				continue
			}
			for _, pair := range []struct {
				scope     string
				got, want []rule
			}{{"cluster", n.cluster, want.cluster}, {"namespace", n.ns, want.ns}} {
				g, w := ruleSet(pair.got), ruleSet(pair.want)
				for _, r := range g {
					if strings.Contains(r, "*") {
						t.Errorf("%s: %s has a wildcard rule %s", what, sa, r)
					}
					if !slices.Contains(w, r) {
						t.Errorf("%s: %s is granted %s (%s) that no container needs", what, sa, r, pair.scope)
					}
				}
				for _, r := range w {
					if !slices.Contains(g, r) {
						t.Errorf("%s: %s lacks %s (%s)", what, sa, r, pair.scope)
					}
				}
			}
		}
		for sa := range podSAs(objs) {
			if _, ok := got[sa]; !ok && len(table[sa].cluster)+len(table[sa].ns) > 0 {
				t.Errorf("%s: service account %s has no binding", what, sa)
			}
		}
	}
}

func podSAs(objs []object) map[string]bool {
	m := map[string]bool{}
	for _, p := range podSpecs(objs) {
		m[p.ServiceAccountName] = true
	}
	return m
}
