#!/usr/bin/env bash
# Runs ava tests against the addon built with AddressSanitizer and UndefinedBehaviorSanitizer.
#
# The sanitized addon is built in its own directory (.tmp/asan, kept for incremental rebuilds:
# symlinks to binding.gyp, native/, scripts/ and node_modules/, with build/ of its own), never in
# the repository's build/, which other builds and test runs share: build/Release/fusekit.node stays
# the normal build throughout. The tests load the sanitized addon through node-gyp-build's
# FUSEKIT_PREBUILD override, with libasan preloaded into node (and so into every process the tests
# start: node itself is not instrumented). Reports go to files in .tmp/asan/logs (daemons started
# by the tests may have no stderr): ASan's and LeakSanitizer's as asan.<exe>.<pid>, UBSan's as
# ubsan.<exe>.<pid>. All are printed at the end, and any report of ours fails the run; leaks that
# node or other programs make on their own are set aside (see our_leaks). Suppressions of reports
# that come from libfuse or node, each with its reason: scripts/sanitizers/{lsan,ubsan}.supp.
#
# Usage: scripts/test-sanitizers.sh [--all | TEST_FILE...]
#   default: the tests of the core paths (see `default_tests` below); --all: the whole suite
#   but the files in `skip_all` (each with why it cannot run sanitized).
# Environment: FUSEKIT_ASAN_DIR overrides .tmp/asan; JOBS sets the build's parallelism.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

default_tests=(
  test/smoke.test.ts
  test/ops.test.ts
  test/overlay.test.ts
  test/concurrency.test.ts
  test/lifecycle.test.ts
  test/locks.test.ts
)
# Test files --all leaves out, and why.
declare -A skip_all=(
  # It packs the package, builds an unsanitized prebuild of its own and checks what installs load:
  # the FUSEKIT_PREBUILD override would swap in the sanitized addon and defeat the test.
  [test/package.test.ts]=1
)
if [[ ${1:-} == --all ]]; then
  tests=()
  for f in test/*.test.ts; do
    [[ -n ${skip_all[$f]:-} ]] || tests+=("$f")
  done
elif (($#)); then
  tests=("$@")
else
  tests=("${default_tests[@]}")
fi

asan_dir=${FUSEKIT_ASAN_DIR:-$repo/.tmp/asan}
logs=$asan_dir/logs
mkdir -p "$asan_dir"
for f in binding.gyp native scripts node_modules; do
  ln -sfn "$repo/$f" "$asan_dir/$f"
done

libasan=$(gcc -print-file-name=libasan.so)
libasan=$(readlink -f "$libasan")
[[ -f $libasan ]] || {
  echo "test-sanitizers: libasan not found (Debian package libasan8, which gcc brings)" >&2
  exit 1
}

# ---- build (under the build lock, like every node-gyp run here)

flags='-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined -g -O1'
# libubsan linked statically: the shared libubsan ignores log_path when libasan is loaded too
# (GCC 12), so the reports of daemons whose stderr nobody reads would be lost.
ldflags='-fsanitize=address,undefined -static-libubsan'
nodedir=$(npm config get nodedir 2>/dev/null || true)
gyp_args=()
[[ -n $nodedir && $nodedir != null && $nodedir != undefined ]] && gyp_args+=("--nodedir=$nodedir")
gyp=$repo/node_modules/node-gyp/bin/node-gyp.js
echo "test-sanitizers: building the sanitized addon in $asan_dir"
(
  cd "$asan_dir"
  export CFLAGS=$flags CXXFLAGS=$flags LDFLAGS=$ldflags
  export JOBS=${JOBS:-$(nproc)}
  # Reconfigure when the flags change (a build/ made with other flags would be reused otherwise).
  if [[ ! -f build/Makefile || $(cat build/.sanitize-flags 2>/dev/null) != "$flags $ldflags" ]]; then
    flock /tmp/fusekit-build.lock node "$gyp" rebuild "${gyp_args[@]}"
    echo "$flags $ldflags" >build/.sanitize-flags
  else
    flock /tmp/fusekit-build.lock node "$gyp" build "${gyp_args[@]}"
  fi
) >"$asan_dir/build.log" 2>&1 || {
  tail -n 40 "$asan_dir/build.log" >&2
  echo "test-sanitizers: the sanitized build failed (log: $asan_dir/build.log)" >&2
  exit 1
}
addon=$asan_dir/build/Release/fusekit.node
[[ $(ldd "$addon") == *libasan* ]] || {
  echo "test-sanitizers: $addon is not linked with libasan" >&2
  exit 1
}

# ---- run the tests against it

rm -rf "$logs"
mkdir -p "$logs"
export FUSEKIT_PREBUILD=$asan_dir
export LD_PRELOAD=$libasan${LD_PRELOAD:+:$LD_PRELOAD}
# Uninstrumented node with a preloaded runtime: no ODR or link-order complaints. Leaks are
# detected (exitcode=0: reported, but the exit status stays the program's own, which tests check;
# errors still abort) and sorted out below, since node and other programs leak at exit too.
# malloc_context_size=10 (30 by default): every node process that ends through process.exit
# reports about a thousand V8 leaks, and symbolizing 30 frames of each made such an exit take
# 5-8 s longer even on an idle machine, more than the 30 s tests give a child to exit once the
# machine is busy. 10 frames still name the code of ours that allocated (it is frame 1 or 2), and
# the stack of the faulting access in an ASan error is unwound in full whatever this says.
supp=$repo/scripts/sanitizers
export ASAN_OPTIONS="detect_leaks=1:exitcode=0:malloc_context_size=10:halt_on_error=1:abort_on_error=1:detect_odr_violation=0:verify_asan_link_order=0:log_path=$logs/asan:log_exe_name=1:stack_trace_format='    #%n %p %F %L {%m}'"
export LSAN_OPTIONS="suppressions=$supp/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:abort_on_error=1:suppressions=$supp/ubsan.supp:log_path=$logs/ubsan:log_exe_name=1"

loaded=$(node -p "require('node-gyp-build').path('$repo')")
[[ $loaded == "$addon" ]] || {
  echo "test-sanitizers: the tests would load $loaded, not $addon" >&2
  exit 1
}
echo "test-sanitizers: running ${#tests[@]} test file(s) against $addon"
start=$SECONDS
status=0
# --timeout: ava's limit on a stretch without any test finishing (3m in package.json); everything
# runs several times slower sanitized, more so on a machine shared with other builds.
npx ava --timeout=10m "${tests[@]}" 2>&1 | tee "$asan_dir/ava.log" || status=$?
unset LD_PRELOAD FUSEKIT_PREBUILD
echo "test-sanitizers: ava took $((SECONDS - start))s (exit status $status)"

# ---- reports

# Leak blocks allocated by the addon (our code, or the libfuse linked into it): the innermost
# frame outside the C and C++ runtimes and the sanitizers is in fusekit.node (frames carry their
# module, see stack_trace_format). Every node process ending through process.exit leaks V8 heap
# pages and the like, also ones V8 allocated while our code called into N-API (a class defined,
# an object made), and the other programs the tests run (git, mount, ...) get the preloaded
# runtime too: their leaks are not ours, and are set aside in $logs/foreign-leaks. (A leak that
# node allocates for us, such as a napi_ref never deleted, is missed: process.exit leaves those
# behind anyway.)
our_leaks() {
  awk '
    function flush() {
      if (inb && owner ~ /\/fusekit\.node$/) printf "%s\n", blk
      inb = 0
    }
    /^(Direct|Indirect) leak of/ { flush(); inb = 1; blk = $0 ORS; owner = ""; next }
    inb && /^$/ { flush(); next }
    inb {
      blk = blk $0 ORS
      if (owner == "" && match($0, /\{[^{}]*\}$/)) {
        mod = substr($0, RSTART + 1, RLENGTH - 2)
        if (mod !~ /\/(libasan|libubsan|libc|libstdc\+\+|libgcc_s|libm|ld-linux-x86-64)\.so[.0-9]*$/)
          owner = mod
      }
    }
    END { flush() }
  ' "$1"
}

shopt -s nullglob
logfiles=("$logs"/*.*)
shopt -u nullglob
reports=()
foreign=0
for r in "${logfiles[@]}"; do
  if grep -qE 'ERROR: (AddressSanitizer|UndefinedBehaviorSanitizer)|runtime error:' "$r" ||
    ! grep -q 'ERROR: LeakSanitizer' "$r"; then
    reports+=("$r")
    echo "==== $r" >&2
    cat "$r" >&2
  else
    leaks=$(our_leaks "$r")
    if [[ -n $leaks ]]; then
      reports+=("$r")
      echo "==== $r (leaks through the addon only)" >&2
      printf '%s\n' "$leaks" >&2
    else
      mkdir -p "$logs/foreign-leaks"
      mv "$r" "$logs/foreign-leaks/"
      foreign=$((foreign + 1))
    fi
  fi
done
((foreign == 0)) || echo "test-sanitizers: $foreign leak report(s) of node or other programs only (not ours): $logs/foreign-leaks"
# Whatever went to the tests' output all the same (a sanitizer's report printed to stderr).
if grep -E 'runtime error:|ERROR: [A-Za-z]+Sanitizer' "$asan_dir/ava.log" >/dev/null; then
  echo "test-sanitizers: sanitizer reports in the tests' output ($asan_dir/ava.log):" >&2
  grep -E -A30 'runtime error:|ERROR: [A-Za-z]+Sanitizer' "$asan_dir/ava.log" >&2 || true
  reports+=("$asan_dir/ava.log")
fi
if ((${#reports[@]})); then
  echo "test-sanitizers: ${#reports[@]} sanitizer report(s): ${reports[*]}" >&2
  status=1
else
  echo "test-sanitizers: no sanitizer reports"
fi

# The shared build/ was never touched; say so if anything left it sanitized all the same.
if [[ -f build/Release/fusekit.node && $(ldd build/Release/fusekit.node) == *libasan* ]]; then
  echo "test-sanitizers: build/Release/fusekit.node is a sanitized build: rebuilding it" >&2
  rm -f build/Release/fusekit.node
  flock /tmp/fusekit-build.lock node scripts/build-native.js
fi
exit "$status"
