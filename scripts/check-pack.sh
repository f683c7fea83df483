#!/usr/bin/env bash
# Checks the npm package end to end, on a copy of the work tree in a temporary directory (the
# repository's build/ and prebuilds/ are never touched, so this can run beside builds and tests):
#   1. `npm run prebuildify` makes prebuilds/linux-x64/*.node with libfuse linked in (no
#      libfuse.so in ldd, no undefined fuse_* symbol);
#   2. `npm pack` makes a tarball that holds the prebuild and the compiled JavaScript;
#   3. `npm install <tarball>` into an empty project, with a PATH that has node, npm and sh but
#      no compiler, make or python (so node-gyp cannot build), installs from the prebuild;
#   4. the installed package loads the prebuild through require('fusekit') and, where /dev/fuse
#      can be used, mounts a directory, serves a read and a write, and unmounts.
# Dependencies come from the npm registry (or npm's cache). Prints "check-pack: ok" at the end.
#
# Usage: scripts/check-pack.sh [--keep]   (--keep leaves the temporary directory for a look)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
keep=0
[[ ${1:-} == --keep ]] && keep=1

work=$(mktemp -d "${TMPDIR:-/tmp}/fusekit-pack.XXXXXX")
cleanup() {
  # A mount left by a failed step would keep the directory busy.
  if [[ -d $work/app/mnt ]] && mountpoint -q "$work/app/mnt"; then
    umount -l "$work/app/mnt" 2>/dev/null || true
  fi
  if ((keep)); then
    echo "check-pack: left $work"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT

start=$SECONDS
step() { echo "check-pack: [$((SECONDS - start))s] $*"; }
die() {
  echo "check-pack: FAILED: $*" >&2
  exit 1
}

# ---- 1. a copy of the work tree (what git tracks or would track), sharing node_modules and the
# libfuse build in deps/ with the repository

src=$work/src
mkdir -p "$src"
step "copying the work tree to $src"
(
  cd "$repo"
  git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' f; do [[ -e $f ]] && printf '%s\0' "$f"; done |
    xargs -0 cp --parents -t "$src"
)
ln -s "$repo/node_modules" "$src/node_modules"
export FUSEKIT_DEPS=$repo/deps
export JOBS=${JOBS:-$(nproc)}

step "npm run prebuildify"
(cd "$src" && npm run --silent prebuildify) || die "npm run prebuildify failed"
shopt -s nullglob
built=("$src"/prebuilds/linux-x64/*.node)
shopt -u nullglob
((${#built[@]} == 1)) || die "expected one prebuilds/linux-x64/*.node, found: ${built[*]:-none}"
prebuild=${built[0]}
step "prebuild ${prebuild#"$src"/} ($(stat -c %s "$prebuild") bytes)"
# (Whole outputs first: `cmd | grep -q` can fail on SIGPIPE under pipefail.)
deps=$(ldd "$prebuild")
sed 's/^/  ldd: /' <<<"$deps"
if grep -i 'libfuse' <<<"$deps"; then
  die "the prebuild links a shared libfuse"
fi
undefined=$(nm -D --undefined-only "$prebuild")
if grep ' fuse_' <<<"$undefined"; then
  die "the prebuild leaves fuse_* symbols undefined"
fi
grep -Eq ' napi_register_module_v1(@|$)' <<<"$(nm -D --defined-only "$prebuild")" ||
  die "the prebuild does not export napi_register_module_v1"

# ---- 2. the tarball

step "npm pack"
tgz_name=$(cd "$src" && npm pack --silent --pack-destination "$work" | tail -n 1)
tgz=$work/$tgz_name
[[ -f $tgz ]] || die "npm pack made no tarball ($tgz_name)"
tar -tzf "$tgz" >"$work/contents.txt"
step "$tgz_name: $(wc -l <"$work/contents.txt") files, $(stat -c %s "$tgz") bytes"
for want in package/package.json package/dist/lib/index.js package/binding.gyp \
  "package/prebuilds/linux-x64/$(basename "$prebuild")"; do
  grep -qx "$want" "$work/contents.txt" || die "the tarball lacks $want"
done
if grep -q '^package/build/' "$work/contents.txt"; then
  die "the tarball holds build/: $(grep '^package/build/' "$work/contents.txt" | head -3)"
fi

# ---- 3. install into an empty project with no compiler on PATH

bin=$work/bin
mkdir -p "$bin"
ln -s "$(command -v node)" "$bin/node"
ln -s "$(readlink -f "$(command -v npm)")" "$bin/npm"
ln -s "$(command -v sh)" "$bin/sh" # npm runs install scripts with sh
for tool in cc gcc g++ c++ make python3 python; do
  if PATH=$bin command -v "$tool" >/dev/null 2>&1; then
    die "$tool is still reachable on the stripped PATH"
  fi
done

app=$work/app
mkdir -p "$app"
cat >"$app/package.json" <<'EOF'
{ "name": "fusekit-pack-check", "version": "1.0.0", "private": true }
EOF
step "npm install $tgz_name (PATH=$bin: node, npm, sh)"
(
  cd "$app"
  # CC/CXX too, in case node-gyp found a compiler some other way.
  env PATH="$bin" CC=/bin/false CXX=/bin/false npm_config_build_from_source=false \
    npm install --ignore-scripts=false --no-audit --no-fund --loglevel=error "$tgz"
) || die "npm install of the tarball failed"
pkg=$app/node_modules/fusekit
[[ -f $pkg/package.json ]] || die "fusekit is not in $app/node_modules"
[[ ! -e $pkg/build ]] || die "the install built the addon ($pkg/build exists)"

# ---- 4. load it, and mount with it

mkdir -p "$app/src" "$app/mnt"
echo "hello from the source" >"$app/src/hello.txt"
can_mount=0
[[ -c /dev/fuse && $(id -u) == 0 ]] && can_mount=1
step "require('fusekit')$( ((can_mount)) && echo ', mount, read, write, unmount')"
cat >"$app/check.js" <<'EOF'
const fs = require('node:fs');
const path = require('node:path');
const fusekit = require('fusekit');
const pkgDir = path.dirname(require.resolve('fusekit/package.json'));
const loaded = require('node-gyp-build').path(pkgDir);
if (!loaded.includes(`${path.sep}prebuilds${path.sep}`)) throw new Error(`loaded ${loaded}`);
async function main() {
  const out = { loaded: path.relative(process.cwd(), loaded), exports: Object.keys(fusekit).length };
  if (process.argv[2] === 'mount') {
    const src = path.resolve('src');
    const mnt = path.resolve('mnt');
    const m = await fusekit.mount({ source: src, mountpoint: mnt });
    try {
      out.read = fs.readFileSync(path.join(mnt, 'hello.txt'), 'utf8').trim();
      fs.writeFileSync(path.join(mnt, 'written.txt'), 'through the mount\n');
      out.writtenInSource = fs.readFileSync(path.join(src, 'written.txt'), 'utf8').trim();
      out.mounted = fs.readFileSync('/proc/self/mountinfo', 'utf8').includes(` ${mnt} `);
    } finally {
      await m.unmount();
    }
    out.unmounted = !fs.readFileSync('/proc/self/mountinfo', 'utf8').includes(` ${mnt} `);
    if (out.read !== 'hello from the source') throw new Error(`read ${out.read}`);
    if (out.writtenInSource !== 'through the mount') throw new Error('write did not land');
    if (!out.mounted || !out.unmounted) throw new Error(`mount table: ${JSON.stringify(out)}`);
  }
  console.log(JSON.stringify(out));
}
main().catch((e) => {
  console.error(e);
  process.exit(1);
});
EOF
(
  cd "$app"
  env PATH="$bin" node check.js $( ((can_mount)) && echo mount)
) || die "the installed package does not work"
((can_mount)) || step "skipped the mount: needs root and /dev/fuse"

step ok
