#!/bin/bash
# Builds e2e.test (the Kubernetes e2e suite, whose External Storage tests
# run against csi-qcow2 with test/e2e/testdriver.yaml), kubectl (the suite
# runs kubectl exec) and agnhost (a test image's binary) from
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

if [ -x "$BIN/e2e.test" ] && [ -x "$BIN/kubectl" ] && [ -x "$BIN/agnhost" ]; then
	log "e2e.test, kubectl and agnhost for $K8S_VERSION are in $BIN"
	echo "$BIN"
	exit 0
fi

k8s_module -t k8s.io/kubernetes/test/e2e k8s.io/kubernetes/cmd/kubectl k8s.io/kubernetes/test/images/agnhost
k8s_build agnhost k8s.io/kubernetes/test/images/agnhost build
k8s_build kubectl k8s.io/kubernetes/cmd/kubectl build
k8s_build e2e.test k8s.io/kubernetes/test/e2e test -c
echo "$BIN"
