# Sourced by build-k8s.sh and build-e2e-test.sh: the cache layout, the
# generated module that builds packages of k8s.io/kubernetes, and the build
# of one binary from it with the release's version stamped in.
#
# Environment: K8S_VERSION (default v1.37.2), CSI_QCOW2_E2E_CACHE (default
# ~/.cache/csi-qcow2-e2e), GO (default go).

K8S_VERSION=${K8S_VERSION:-v1.37.2}
CACHE=${CSI_QCOW2_E2E_CACHE:-$HOME/.cache/csi-qcow2-e2e}
GO=${GO:-go}
BIN=$CACHE/k8s-$K8S_VERSION/bin
BUILD=$CACHE/k8s-build/$K8S_VERSION

# k8s_module [-t] PKG...: makes $BUILD a module that requires k8s.io/kubernetes
# and replaces every staging module (k8s.io/X => ./staging/src/k8s.io/X
# upstream) with its published v0.MINOR.PATCH version, then resolves the
# packages PKG (import paths under k8s.io/kubernetes) in it, with what their
# tests import too when -t is given (for go test -c). The go.mod is
# made once; each caller's go get adds what its packages need. Leaves the
# shell in $BUILD with GOCACHE=$CACHE/gocache.
k8s_module() {
	local get=(get)
	if [ "${1:-}" = -t ]; then
		get+=(-t)
		shift
	fi
	mkdir -p "$BUILD" "$BIN" "$CACHE/gocache"
	export GOCACHE=$CACHE/gocache GOTOOLCHAIN=local GOFLAGS=-buildvcs=false
	cd "$BUILD"
	if [ ! -f go.mod ]; then
		# Upstream's go.mod, from the module proxy, names the staging modules.
		local upstream staging
		upstream=$("$GO" mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^\s*"GoMod": "\(.*\)",\?$/\1/p')
		[ -f "$upstream" ] || { log "no go.mod for k8s.io/kubernetes@$K8S_VERSION"; return 1; }
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
		} >go.mod.tmp
		mv go.mod.tmp go.mod
	fi
	[ -f main.go ] || printf 'package main\n\nfunc main() {}\n' >main.go
	log "resolving modules for $K8S_VERSION ($(grep -c '^replace' go.mod) staging modules)"
	local pkgs=() p
	for p in "$@"; do pkgs+=("$p@$K8S_VERSION"); done
	"$GO" "${get[@]}" "${pkgs[@]}" >&2
}

# k8s_ldflags: the linker flags that stamp $K8S_VERSION into a binary
# (kubelet --version, e2e.test's version checks).
k8s_ldflags() {
	local major minor kv ldflags="-s -w"
	major=${K8S_VERSION#v}
	major=${major%%.*}
	minor=${K8S_VERSION#v*.}
	minor=${minor%%.*}
	for kv in gitVersion=$K8S_VERSION gitMajor=$major gitMinor=$minor gitTreeState=clean buildDate=1970-01-01T00:00:00Z; do
		ldflags+=" -X k8s.io/component-base/version.$kv -X k8s.io/client-go/pkg/version.$kv"
	done
	echo "$ldflags"
}

# k8s_build NAME PKG GO-SUBCOMMAND...: builds $BIN/NAME from the package
# PKG with `go GO-SUBCOMMAND` (build, or test -c) unless it is there.
k8s_build() {
	local name=$1 pkg=$2 start
	shift 2
	[ -x "$BIN/$name" ] && return 0
	start=$(date +%s)
	log "building $name"
	CGO_ENABLED=0 "$GO" "$@" -trimpath -ldflags "$(k8s_ldflags)" -o "$BIN/$name.tmp" "$pkg" >&2
	mv "$BIN/$name.tmp" "$BIN/$name"
	log "built $name in $(($(date +%s) - start)) s"
}
