#!/bin/bash
# Builds the CSI sidecars the chart runs, for the local e2e cluster, which
# pulls no image (cluster.SidecarImages packs each binary into an image).
#
# Each upstream sidecar is built from its module on the Go module proxy, in
# a writable copy under $CACHE/sidecars/src (the module cache is read-only;
# the modules ship no vendor/, so -mod=mod fetches the dependencies), as a
# static binary with main.version set. $BIN/NAME.version records the version
# built; a binary whose record matches is not built again. GOCACHE is
# build-k8s.sh's ($CACHE/gocache).
#
# Cold build times (empty build cache, modules mostly downloaded; 2 cores
# shared with other builds, load 3 to 8), in this order: csi-provisioner
# 172 s, csi-snapshotter 254 s, snapshot-controller 9 s (same module),
# csi-resizer 250 s (k8s.io v0.36, shares little), the livenessprobe
# stand-in 9 s; in all 11 min 35 s wall, 13 min CPU, 3.9 GB of build cache. A binary rebuilt from a warm cache: 3 s; the script with
# every binary built: 0.4 s.
#
# Environment: CSI_QCOW2_E2E_CACHE (default ~/.cache/csi-qcow2-e2e), GO
# (default go). Prints the binary directory on its last line.
set -euo pipefail

CACHE=${CSI_QCOW2_E2E_CACHE:-$HOME/.cache/csi-qcow2-e2e}
GO=${GO:-go}
BIN=$CACHE/sidecars/bin
SRC=$CACHE/sidecars/src
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)

log() { echo "build-sidecars: $*" >&2; }

mkdir -p "$BIN" "$SRC" "$CACHE/gocache"
export GOCACHE=$CACHE/gocache GOTOOLCHAIN=local GOFLAGS=-buildvcs=false CGO_ENABLED=0

# sidecar NAME MODULE VERSION PACKAGE [go mod edit flags...]
sidecar() {
	local name=$1 mod=$2 ver=$3 pkg=$4
	shift 4
	if [ -x "$BIN/$name" ] && [ "$(cat "$BIN/$name.version" 2>/dev/null)" = "$ver" ]; then
		return
	fi
	local src=$SRC/${mod//\//_}@$ver
	if [ ! -f "$src/.ready" ]; then
		local dir
		dir=$("$GO" mod download -json "$mod@$ver" | sed -n 's/^\s*"Dir": "\(.*\)",\?$/\1/p')
		[ -d "$dir" ] || { log "the module proxy has no $mod@$ver"; exit 1; }
		rm -rf "$src"
		cp -r "$dir" "$src"
		chmod -R u+w "$src"
		[ $# -eq 0 ] || (cd "$src" && "$GO" mod edit "$@")
		touch "$src/.ready"
	fi
	local start
	start=$(date +%s)
	log "building $name $ver"
	(cd "$src" && "$GO" build -mod=mod -trimpath -ldflags "-s -w -X main.version=$ver" -o "$BIN/$name.tmp" "./$pkg") >&2
	mv "$BIN/$name.tmp" "$BIN/$name"
	echo "$ver" >"$BIN/$name.version"
	log "built $name in $(($(date +%s) - start)) s"
}

# The chart's versions (charts/csi-qcow2/values.yaml), where the proxy has them.
sidecar csi-provisioner github.com/kubernetes-csi/external-provisioner/v6 v6.4.0 cmd/csi-provisioner

# go.mod replaces the client module with ./client, a nested module that is
# not in the module's zip: use the published one of the same release.
snap=(-replace=github.com/kubernetes-csi/external-snapshotter/client/v8=github.com/kubernetes-csi/external-snapshotter/client/v8@v8.7.0)
sidecar csi-snapshotter github.com/kubernetes-csi/external-snapshotter/v8 v8.7.0 cmd/csi-snapshotter "${snap[@]}"
sidecar snapshot-controller github.com/kubernetes-csi/external-snapshotter/v8 v8.7.0 cmd/snapshot-controller "${snap[@]}"

# The chart pins v2.2.1, which the proxy refuses (it lists v2.2.0 and
# v2.3.0): v2.2.0, the same minor release.
sidecar csi-resizer github.com/kubernetes-csi/external-resizer/v2 v2.2.0 cmd/csi-resizer

# livenessprobe (the chart pins v2.19.0): the proxy serves no version of it
# (neither github.com/kubernetes-csi/livenessprobe@v2.x.y+incompatible nor
# .../livenessprobe/v2), so a stand-in from this repository serves /healthz
# the same way (test/e2e/cluster/livenessprobe). Always rebuilt: it is ours
# and small, so the build cache makes that cheap.
log "building livenessprobe (stand-in)"
(cd "$REPO" && "$GO" build -trimpath -ldflags "-s -w" -o "$BIN/livenessprobe.tmp" ./test/e2e/cluster/livenessprobe) >&2
mv "$BIN/livenessprobe.tmp" "$BIN/livenessprobe"
echo v0.1.0 >"$BIN/livenessprobe.version"

echo "$BIN"
