#!/usr/bin/env bash
# Builds the driver's OCI image without a container engine (`make image`):
# the Debian bookworm packages the node plugin runs (mkfs, fsck, blkid,
# mount, resize, modprobe), fetched with apt-get download into a cache and
# extracted with dpkg-deb -x into a root; the static csi-qcow2 binary; and
# internal/tools/mkimage, which makes the layers and the OCI layout tarball.
# docs/image.md says what is in it and why. Needs a Debian bookworm host
# with apt (root, or sudo, only for apt-get update when the lists are
# missing, and to extract with the packages' owners).
#
# Environment: VERSION (v0.1.0), OUT (bin/csi-qcow2-image.tar), IMAGE_NAME
# (localhost/csi-qcow2), CACHE (~/.cache/csi-qcow2-image/debs), GO (go),
# EXTRA_PACKAGES (more packages for the root, e.g. fuse3),
# SOURCE_DATE_EPOCH (default: the last commit's time, else 0).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=${VERSION:-v0.1.0}
OUT=${OUT:-bin/csi-qcow2-image.tar}
IMAGE_NAME=${IMAGE_NAME:-localhost/csi-qcow2}
CACHE=${CACHE:-$HOME/.cache/csi-qcow2-image/debs}
GO=${GO:-go}
SOURCE_URL=${SOURCE_URL:-https://github.com/csi-qcow2/csi-qcow2}

# What the node plugin executes: mkfs.ext4, resize2fs, e2fsck/fsck.ext4
# (e2fsprogs); mkfs.xfs, xfs_growfs, xfs_repair (xfsprogs); blkid, fsck,
# fstrim, blockdev (util-linux); mount, umount (mount); modprobe nbd (kmod);
# /bin/sh (dash) because fsck.xfs, which `fsck -a` runs on an xfs volume,
# is a shell script. fuse3 is left out: the driver mounts FUSE itself
# through /dev/fuse (mount(2), never fusermount3), and it would add a
# setuid-root binary nothing calls.
PACKAGES="e2fsprogs xfsprogs util-linux mount kmod dash ${EXTRA_PACKAGES:-}"

# Dependencies not followed, because a root that only runs the tools above
# does not need them. The packages are extracted, never configured, so
# what only maintainer scripts use is dead weight: debconf (and its
# virtual debconf-2.0, cdebconf), adduser, passwd, sed, and dash's
# dpkg (for dpkg-divert; it brings tar) and debianutils (add-shell).
# python3 (and
# python3:any) is there for xfs_scrub_all, libicu72 (36 MB) for xfs_scrub:
# the driver runs neither, and both are removed from the root below.
EXCLUDE=" debconf debconf-2.0 cdebconf adduser passwd sed dpkg debianutils python3 python3:any libicu72 "

# deps PKG... prints, for every PKG, one package per dependency group
# (Depends and Pre-Depends): the first alternative that is not excluded,
# and for a virtual package (<name>) its first provider that is not
# excluded. A group whose every choice is excluded adds nothing. One
# apt-cache call serves many packages: each call costs most of a second
# here, loading the package lists.
deps() {
	apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks \
		--no-replaces --no-enhances "$@" | awk -v exclude="$EXCLUDE" '
		function excluded(p) { return index(exclude, " " p " ") > 0 }
		function take(p) { if (!chosen && !excluded(p)) { print p; chosen = 1 } }
		/^[^ ]/ { continues = 0; chosen = 0; virt = 0; next } # the next package
		/^ *\|?(Pre)?Depends: / {
			if (!continues) chosen = 0 # a new group
			continues = ($0 ~ /^ *\|/)
			name = $2; virt = 0
			if (name ~ /^</) { virt = 1; gsub(/[<>]/, "", name); vskip = excluded(name) }
			else take(name)
			next
		}
		/^    / { if (virt && !vskip) take($1); next }
		'
}

if ! apt-cache show e2fsprogs >/dev/null 2>&1; then
	sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
	$sudo apt-get update -qq
fi

# The closure, breadth first from PACKAGES, one apt-cache call a level.
declare -A have=()
level=($PACKAGES)
while [ "${#level[@]}" -gt 0 ]; do
	for p in "${level[@]}"; do have[$p]=1; done
	next=()
	for d in $(deps "${level[@]}" | sort -u); do
		[ -n "${have[$d]:-}" ] || next+=("$d")
	done
	level=("${next[@]}")
done
pkgs=$(printf '%s\n' "${!have[@]}" | sort)

# Fetch what the cache lacks: apt-get download --print-uris names each
# candidate's file (name_version_arch.deb), so a cached file of the same
# version is reused and a newer candidate is fetched beside it.
mkdir -p "$CACHE"
debs=()
missing=()
while read -r _uri file _size _sum; do
	debs+=("$CACHE/$file")
	[ -s "$CACHE/$file" ] || missing+=("${file%%_*}")
done < <(apt-get download --print-uris $pkgs)
if [ "${#missing[@]}" -gt 0 ]; then
	echo "build-image: fetching ${#missing[@]} packages into $CACHE" >&2
	# As root, apt drops to _apt to download, which cannot write a
	# cache under root's home; stay root for this directory only.
	sandbox=()
	[ "$(id -u)" -ne 0 ] || sandbox=(-o APT::Sandbox::User=root)
	(cd "$CACHE" && apt-get download -q "${sandbox[@]}" "${missing[@]}" >/dev/null)
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"
for deb in "${debs[@]}"; do
	dpkg-deb -x "$deb" "$root"
done
# Not needed at run time, and not run by the driver: manual pages, info,
# translations, lintian overrides; the programs that would need the
# packages left out above (python3, libicu72). Copyright files stay.
rm -rf "$root"/usr/share/{man,info,locale,lintian,bug,bash-completion}
find "$root"/usr/share/doc -type f ! -name copyright -delete
find "$root"/usr/share/doc -type d -empty -delete
rm -f "$root"/usr/sbin/xfs_scrub "$root"/usr/sbin/xfs_scrub_all "$root"/usr/lib/udev/rules.d/*xfs*
rm -rf "$root"/lib/systemd/system/xfs_scrub* "$root"/usr/lib/systemd/system/xfs_scrub*
# dash's postinst, never run here, is what makes /bin/sh.
[ -e "$root/bin/sh" ] || ln -s dash "$root/bin/sh"
# What any container root has: a world-writable /tmp.
install -d -m 1777 "$root/tmp"
printf '%s\n' $pkgs >"$work/packages"

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
	SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || echo 0)
fi
export SOURCE_DATE_EPOCH

CGO_ENABLED=0 "$GO" build -trimpath -ldflags "-X main.version=$VERSION" -o "$work/csi-qcow2" ./cmd/csi-qcow2
labels=(-label "org.opencontainers.image.source=$SOURCE_URL"
	-label "org.opencontainers.image.title=csi-qcow2")
if rev=$(git rev-parse HEAD 2>/dev/null); then
	labels+=(-label "org.opencontainers.image.revision=$rev")
fi
mkdir -p "$(dirname "$OUT")"
"$GO" run ./internal/tools/mkimage -root "$root" -binary "$work/csi-qcow2" \
	-version "$VERSION" -name "$IMAGE_NAME" "${labels[@]}" -out "$OUT"
echo "build-image: $(wc -l <"$work/packages") packages: $(tr '\n' ' ' <"$work/packages")" >&2
