#!/bin/bash
# Builds kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and kube-proxy
# for the local e2e cluster (docs/e2e.md, "The local cluster"), and installs
# the Debian packages the cluster runs on if they are missing.
#
# The build happens in a generated Go module under $CACHE/k8s-build (never in
# the repository): it requires k8s.io/kubernetes and replaces every staging
# module (k8s.io/X => ./staging/src/k8s.io/X upstream) with its published
# v0.MINOR.PATCH version. GOCACHE and the binaries stay under $CACHE, so a
# second run only checks that the binaries are there.
#
# Environment: K8S_VERSION (default v1.37.2; v1.33.13 works too), CSI_QCOW2_E2E_CACHE (default
# ~/.cache/csi-qcow2-e2e), GO (default go), SKIP_APT=1 to not touch packages.
# Prints the binary directory on its last line.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.37.2}
CACHE=${CSI_QCOW2_E2E_CACHE:-$HOME/.cache/csi-qcow2-e2e}
GO=${GO:-go}
BIN=$CACHE/k8s-$K8S_VERSION/bin
BUILD=$CACHE/k8s-build/$K8S_VERSION
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

mkdir -p "$BUILD" "$BIN" "$CACHE/gocache"
export GOCACHE=$CACHE/gocache GOTOOLCHAIN=local GOFLAGS=-buildvcs=false
cd "$BUILD"

# Upstream's go.mod, from the module proxy, names the staging modules.
upstream=$("$GO" mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^\s*"GoMod": "\(.*\)",\?$/\1/p')
[ -f "$upstream" ] || { log "no go.mod for k8s.io/kubernetes@$K8S_VERSION"; exit 1; }
staging=${K8S_VERSION/#v1./v0.}
{
	echo "module csi-qcow2-e2e/k8s-build"
	echo
	echo "go $(sed -n 's/^go \(.*\)$/\1/p' "$upstream")"
	echo
	echo "require k8s.io/kubernetes $K8S_VERSION"
	echo
	sed -n 's#^\s*\(replace \)\?\(k8s.io/[^ ]*\) => \./staging/src/.*$#\2#p' "$upstream" | sort -u |
		while read -r m; do echo "replace $m => $m $staging"; done
} >go.mod
[ -f main.go ] || printf 'package main\n\nfunc main() {}\n' >main.go
log "resolving modules for $K8S_VERSION ($(grep -c '^replace' go.mod) staging modules)"
pkgs=()
for c in "${CMDS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c@$K8S_VERSION"); done
"$GO" get "${pkgs[@]}" >&2

major=${K8S_VERSION#v}; major=${major%%.*}
minor=${K8S_VERSION#v*.}; minor=${minor%%.*}
ldflags="-s -w"
for kv in gitVersion=$K8S_VERSION gitMajor=$major gitMinor=$minor gitTreeState=clean buildDate=1970-01-01T00:00:00Z; do
	ldflags+=" -X k8s.io/component-base/version.$kv -X k8s.io/client-go/pkg/version.$kv"
done
for c in "${CMDS[@]}"; do
	[ -x "$BIN/$c" ] && continue
	start=$(date +%s)
	log "building $c"
	CGO_ENABLED=0 "$GO" build -trimpath -ldflags "$ldflags" -o "$BIN/$c.tmp" "k8s.io/kubernetes/cmd/$c" >&2
	mv "$BIN/$c.tmp" "$BIN/$c"
	log "built $c in $(($(date +%s) - start)) s"
done
echo "$BIN"
