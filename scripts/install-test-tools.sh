#!/usr/bin/env bash
# Installs the external programs the tests call (Debian packages), and only
# the ones that are missing. Run by `make test`; safe to run again.
set -euo pipefail

need_pkgs=()
command -v qemu-img >/dev/null 2>&1 || need_pkgs+=(qemu-utils)

if [ "${#need_pkgs[@]}" -eq 0 ]; then
	exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
	sudo="sudo"
fi
echo "install-test-tools: installing ${need_pkgs[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
