#!/bin/bash
# Builds kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and kube-proxy
# for the local e2e cluster (docs/e2e.md, "The local cluster"), and installs
# the Debian packages the cluster runs on if they are missing.
#
# The build happens in a generated Go module under $CACHE/k8s-build (never in
# the repository; k8s-module.sh, shared with build-e2e-test.sh, makes it):
# it requires k8s.io/kubernetes and replaces every staging
# module (k8s.io/X => ./staging/src/k8s.io/X upstream) with its published
# v0.MINOR.PATCH version. GOCACHE and the binaries stay under $CACHE, so a
# second run only checks that the binaries are there.
#
# Environment: K8S_VERSION (default v1.37.2; v1.33.13 works too), CSI_QCOW2_E2E_CACHE (default
# ~/.cache/csi-qcow2-e2e), GO (default go), SKIP_APT=1 to not touch packages.
# Prints the binary directory on its last line.
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/k8s-module.sh"
CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)

log() { echo "build-k8s: $*" >&2; }

# Debian packages: etcd, containerd + runc, the CNI plugins, and the tools the
# kubelet and the CNI bridge plugin call (iptables, mount helpers, ip), and nft
# for kube-proxy's nftables mode.
PKGS=(etcd-server etcd-client containerd runc containernetworking-plugins iptables nftables conntrack iproute2 mount util-linux)
if [ "${SKIP_APT:-}" != 1 ]; then
	missing=()
	for p in "${PKGS[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	if [ ${#missing[@]} -gt 0 ]; then
		log "installing ${missing[*]}"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -q >&2
		apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
	fi
fi

have_all=1
for c in "${CMDS[@]}"; do [ -x "$BIN/$c" ] || have_all=0; done
if [ $have_all = 1 ]; then
	log "binaries for $K8S_VERSION are in $BIN"
	echo "$BIN"
	exit 0
fi

pkgs=()
for c in "${CMDS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
k8s_module "${pkgs[@]}"
for c in "${CMDS[@]}"; do k8s_build "$c" "k8s.io/kubernetes/cmd/$c" build; done
echo "$BIN"
