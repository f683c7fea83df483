#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine for fusekit (root): Debian packages, libfuse 3.18 (built once
# into deps/), the FUSE-over-io_uring module parameter, and npm ci (which builds the addon).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/install-deps.sh "$@"
bash scripts/build-libfuse.sh

# The io_uring transport is off unless the fuse module allows it; the tests cover both transports.
param=/sys/module/fuse/parameters/enable_uring
if [[ -e $param && $(cat "$param") != Y ]]; then
  if echo Y >"$param" 2>/dev/null; then
    echo "setup: enabled FUSE-over-io_uring ($param)"
  else
    echo "setup: cannot enable $param; the io_uring transport will be unavailable" >&2
  fi
fi

npm ci
npm run build:ts   # dist/ for the CLI (npm test builds it again)
