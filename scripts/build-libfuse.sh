#!/usr/bin/env bash
# Builds libfuse >= 3.18.2 (static, position-independent, with io_uring) into deps/libfuse, once.
#
# Debian 12 ships libfuse 3.14, which lacks the passthrough API and the io_uring transport, so the
# fuse3 source package is fetched from a newer Debian suite with apt (apt verifies it against the
# archive's signed indexes; no other source is used). libfuse's io_uring code needs liburing and
# libnuma; Debian's libnuma.a is not position-independent, so libnuma is built from the system
# suite's numactl source package too. Everything ends up in one static archive set that the addon
# links, so prebuilds need no libfuse on the target machine.
#
# Environment: FUSEKIT_REBUILD=1 forces a rebuild; FUSEKIT_DEPS overrides the deps directory.
set -euo pipefail

MIN_VERSION=3.18.2
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
deps=${FUSEKIT_DEPS:-$root/deps}
prefix=$deps/libfuse
stamp=$prefix/.built

if [[ -f $stamp && -z ${FUSEKIT_REBUILD:-} ]]; then
  echo "build-libfuse: libfuse $(cat "$stamp") already built in $prefix"
  exit 0
fi

die() {
  echo "build-libfuse: $*" >&2
  exit 1
}

# Name everything that is missing at once, with the package that provides it.
missing=()
for pair in apt-get:apt dpkg-source:dpkg-dev meson:meson ninja:ninja-build pkg-config:pkg-config \
  cc:gcc make:make autoreconf:autoconf aclocal:automake libtoolize:libtool; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair%%:*} (Debian package ${pair#*:})")
done
if command -v pkg-config >/dev/null 2>&1; then
  pkg-config --exists liburing || missing+=("liburing headers (Debian package liburing-dev)")
  [[ -f /usr/include/numa.h ]] || missing+=("libnuma headers (Debian package libnuma-dev)")
fi
if ((${#missing[@]})); then
  printf 'build-libfuse: cannot build libfuse, missing:\n' >&2
  printf '  - %s\n' "${missing[@]}" >&2
  die "install them (scripts/install-deps.sh does) and run again"
fi

# The Debian archive this machine already uses; the newer suites come from the same place.
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[[ -n $codename ]] || die "cannot tell the Debian release from /etc/os-release"
mirror=""
keyring=""
for f in /etc/apt/sources.list.d/*.sources; do
  [[ -f $f ]] || continue
  # deb822 stanzas: take the one whose Suites hold the plain codename (not -security/-updates).
  stanza=$(awk -v RS='' -v c="$codename" '$0 ~ ("Suites:[^\n]*[ \t]" c "([ \t]|\n|$)") {print; exit}' "$f")
  if [[ -n $stanza ]]; then
    mirror=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' <<<"$stanza" | head -n1)
    keyring=$(sed -n 's/^Signed-By:[[:space:]]*\([^[:space:]]*\).*/\1/p' <<<"$stanza" | head -n1)
    [[ -n $mirror ]] && break
  fi
done
if [[ -z $mirror && -f /etc/apt/sources.list ]]; then
  mirror=$(awk -v c="$codename" '$1 == "deb" && $3 == c {print $2; exit}' /etc/apt/sources.list)
fi
[[ -n $mirror ]] || die "cannot find the Debian archive for '$codename' in the apt sources"

work=$(mktemp -d "${TMPDIR:-/tmp}/fusekit-libfuse.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/apt/lists/partial" "$work/apt/cache/archives/partial" "$work/src"
signed=""
[[ -n $keyring && -f $keyring ]] && signed=" [signed-by=$keyring]"
{
  echo "deb-src$signed $mirror $codename main"
  for suite in forky sid; do echo "deb-src$signed $mirror $suite main"; done
} >"$work/apt/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$work/apt/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
  -o "Dir::State::Lists=$work/apt/lists" -o "Dir::Cache=$work/apt/cache"
  -o "APT::Sandbox::User=root" -q)

echo "build-libfuse: reading Debian source indexes ($codename, forky, sid)"
apt-get "${apt_opts[@]}" update >"$work/apt-update.log" 2>&1 ||
  { cat "$work/apt-update.log" >&2; die "apt-get update for the source indexes failed"; }

# Highest fuse3 source version >= MIN_VERSION and < 4 that any of the suites carries.
version=$(apt-cache "${apt_opts[@]}" showsrc fuse3 2>/dev/null | sed -n 's/^Version: //p' |
  while read -r v; do
    if dpkg --compare-versions "$v" ge "$MIN_VERSION" && dpkg --compare-versions "$v" lt 4; then echo "$v"; fi
  done | sort -V | tail -n1)
[[ -n $version ]] || die "no fuse3 source package >= $MIN_VERSION in Debian $codename/forky/sid"
numa_version=$(apt-cache "${apt_opts[@]}" showsrc numactl 2>/dev/null | sed -n 's/^Version: //p' |
  while read -r v; do echo "$v"; done | sort -V | head -n1)
[[ -n $numa_version ]] || die "no numactl source package found"

cd "$work/src"
echo "build-libfuse: fetching fuse3 $version and numactl $numa_version source packages with apt"
apt-get "${apt_opts[@]}" source --download-only "fuse3=$version" "numactl=$numa_version" \
  >"$work/apt-source.log" 2>&1 || { cat "$work/apt-source.log" >&2; die "apt-get source failed"; }
# dpkg-source only warns that uploader keys are not installed; apt already verified the files.
dpkg-source -x fuse3_*.dsc fuse3 >"$work/unpack.log" 2>&1 || { cat "$work/unpack.log" >&2; die "unpacking fuse3 failed"; }
dpkg-source -x numactl_*.dsc numactl >>"$work/unpack.log" 2>&1 || { cat "$work/unpack.log" >&2; die "unpacking numactl failed"; }

rm -rf "$prefix"
mkdir -p "$prefix/lib" "$prefix/bin"

echo "build-libfuse: building libnuma (static, PIC)"
(
  cd numactl
  ./autogen.sh >"$work/numa-autogen.log" 2>&1
  ./configure -q --with-pic --enable-static --disable-shared >"$work/numa-configure.log" 2>&1
  make -s libnuma.la >"$work/numa-make.log" 2>&1
) || { tail -n 30 "$work"/numa-*.log >&2; die "libnuma build failed"; }
cp numactl/.libs/libnuma.a "$prefix/lib/libnuma.a"

echo "build-libfuse: building libfuse $version (static, PIC, io_uring)"
meson setup fuse3/build fuse3 --prefix="$prefix" --libdir=lib --buildtype=release \
  -Ddefault_library=static -Db_staticpic=true -Dutils=false -Dexamples=true -Dtests=false \
  -Dinitscriptdir= -Duseroot=false -Denable-io-uring=true >"$work/meson.log" 2>&1 ||
  { tail -n 40 "$work/meson.log" >&2; die "meson setup failed"; }
grep -q '^#define HAVE_URING' fuse3/build/fuse_config.h ||
  die "libfuse configured without io_uring (liburing with SQE128 support and libnuma are needed)"
ninja -C fuse3/build >"$work/ninja.log" 2>&1 || { tail -n 40 "$work/ninja.log" >&2; die "ninja failed"; }
meson install -C fuse3/build >"$work/install.log" 2>&1 || { tail -n 20 "$work/install.log" >&2; die "install failed"; }
# The benchmarks run libfuse's own high-performance passthrough example as a peer.
cp fuse3/build/example/passthrough_hp "$prefix/bin/passthrough_hp"

# libfuse and libnuma carry versioned symbols; the addon's version script must name every version
# node and keep them all local, so only the N-API entry points are exported.
{
  echo 'FUSEKIT_1 { global: napi_register_module_v1; node_api_module_get_api_version_v1; local: *; };'
  grep -ohE '^[[:space:]]*(FUSE|libnuma)_[0-9A-Za-z_.]+' fuse3/lib/fuse_versionscript numactl/versions.ldscript |
    tr -d ' \t' | sort -u | sed 's/.*/& { local: *; };/'
} >"$prefix/exports.map"

echo "$version" >"$stamp"
echo "build-libfuse: libfuse $version installed in $prefix"
