package csi

import (
	"strings"

	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// newClass makes a StorageClass like the chart's (same provisioner,
// binding mode and expansion) with more parameters, deleted with the test.
func (n *ns) newClass(suffix string, params map[string]string) string {
	n.t.Helper()
	base, err := n.kube.StorageV1().StorageClasses().Get(n.ctx, n.class, metav1.GetOptions{})
	if err != nil {
		n.t.Fatal(err)
	}
	name := strings.TrimRight(n.name, "-") + "-" + suffix
	sc := &storagev1.StorageClass{
		ObjectMeta:           metav1.ObjectMeta{Name: name},
		Provisioner:          base.Provisioner,
		Parameters:           map[string]string{},
		ReclaimPolicy:        base.ReclaimPolicy,
		VolumeBindingMode:    base.VolumeBindingMode,
		AllowVolumeExpansion: base.AllowVolumeExpansion,
	}
	for k, v := range base.Parameters {
		sc.Parameters[k] = v
	}
	for k, v := range params {
		sc.Parameters[k] = v
	}
	if _, err := n.kube.StorageV1().StorageClasses().Create(n.ctx, sc, metav1.CreateOptions{}); err != nil {
		n.t.Fatal(err)
	}
	n.t.Cleanup(func() {
		if err := n.kube.StorageV1().StorageClasses().Delete(n.ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			n.t.Error(err)
		}
	})
	return name
}

// fsTypeClass is a class whose volumes get the given filesystem.
func (n *ns) fsTypeClass(fsType string) string {
	return n.newClass(fsType, map[string]string{"csi.storage.k8s.io/fstype": fsType})
}
