#!/bin/bash
# Builds e2e.test (the Kubernetes e2e suite, whose External Storage tests
# run against csi-qcow2 with test/e2e/testdriver.yaml), kubectl (the suite
# runs kubectl exec), agnhost (a test image's binary) and the ginkgo CLI
# at the version e2e.test is built with (it runs the specs in parallel) from
# k8s.io/kubernetes, in the same generated module, build cache and binary
# directory as build-k8s.sh (k8s-module.sh); what is already there is not
# built again.
#
# Environment: K8S_VERSION (default v1.37.2), CSI_QCOW2_E2E_CACHE (default
# ~/.cache/csi-qcow2-e2e), GO (default go).
# Prints the binary directory on its last line.
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/k8s-module.sh"

log() { echo "build-e2e-test: $*" >&2; }

if [ -x "$BIN/e2e.test" ] && [ -x "$BIN/kubectl" ] && [ -x "$BIN/agnhost" ] && [ -x "$BIN/ginkgo" ]; then
	log "e2e.test, kubectl, agnhost and ginkgo for $K8S_VERSION are in $BIN"
	echo "$BIN"
	exit 0
fi

k8s_module -t k8s.io/kubernetes/test/e2e k8s.io/kubernetes/cmd/kubectl k8s.io/kubernetes/test/images/agnhost
# The CLI's own packages, at the version the module graph gives e2e.test.
"$GO" get "github.com/onsi/ginkgo/v2/ginkgo@$("$GO" list -m -f '{{.Version}}' github.com/onsi/ginkgo/v2)" >&2
k8s_build ginkgo github.com/onsi/ginkgo/v2/ginkgo build
k8s_build agnhost k8s.io/kubernetes/test/images/agnhost build
k8s_build kubectl k8s.io/kubernetes/cmd/kubectl build
k8s_build e2e.test k8s.io/kubernetes/test/e2e test -c
echo "$BIN"
