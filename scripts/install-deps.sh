#!/usr/bin/env bash
# Installs the Debian packages fusekit needs to build and test (root; idempotent).
#   --bench  also what `npm run bench` uses (fio, fuse-overlayfs, debootstrap).
set -euo pipefail

pkgs=(
  # libfuse build (scripts/build-libfuse.sh)
  dpkg-dev meson ninja-build pkg-config gcc g++ make autoconf automake libtool liburing-dev libnuma-dev
  # the addon (node-gyp) and the tests' C helpers
  python3
  # tests: fusermount3 (unmount as podman does), setfacl, setfattr, tar, flock, setpriv, strace
  fuse3 acl attr tar util-linux kmod strace
  # test/podman-real.test.ts: podman (with crun) running containers on fusekit-overlay
  podman crun busybox-static
  # npm run lint / npm run format (scripts/check-format.sh)
  clang-format
)
if [[ ${1:-} == --bench ]]; then
  pkgs+=(fio fuse-overlayfs debootstrap)
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "install-deps: all packages present"
  exit 0
fi
if [[ $(id -u) != 0 ]]; then
  echo "install-deps: missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
