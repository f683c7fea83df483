#!/usr/bin/env bash
# Checks (default) or applies (--write) the project's formatting:
#   prettier     TypeScript, JavaScript, JSON and Markdown (.prettierrc, .prettierignore)
#   clang-format native/*.{cc,h}, test/helpers/*.c, bench/c/*.c (.clang-format; Debian 12's
#                clang-format 14, which scripts/install-deps.sh installs: other versions may
#                format a few constructs differently)
#
# Usage: scripts/check-format.sh [--write] [FILE...]
#   With FILEs, only those are checked or formatted (each by the tool for its extension).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

write=0
if [[ ${1:-} == --write ]]; then
  write=1
  shift
fi

prettier_files=()
c_files=()
if (($#)); then
  for f in "$@"; do
    case $f in
      *.c | *.cc | *.h) c_files+=("$f") ;;
      *.ts | *.js | *.mjs | *.cjs | *.json | *.md) prettier_files+=("$f") ;;
      *) echo "check-format: no formatter for $f" >&2 ;;
    esac
  done
else
  # prettier expands the pattern itself, leaving out what .gitignore and .prettierignore name.
  prettier_files=('**/*.{ts,mts,cts,js,mjs,cjs,json,md}')
  shopt -s nullglob
  c_files=(native/*.cc native/*.h test/helpers/*.c bench/c/*.c)
  shopt -u nullglob
fi

status=0

if ((${#prettier_files[@]})); then
  prettier=node_modules/.bin/prettier
  if [[ ! -x $prettier ]]; then
    echo "check-format: $prettier is missing (run npm ci)" >&2
    exit 1
  fi
  if ((write)); then
    "$prettier" --write --log-level warn "${prettier_files[@]}" || status=1
  else
    "$prettier" --check --log-level warn "${prettier_files[@]}" || {
      echo "check-format: prettier would change the files above (npm run format)" >&2
      status=1
    }
  fi
fi

if ((${#c_files[@]})); then
  if ! command -v clang-format >/dev/null 2>&1; then
    echo "check-format: clang-format is missing (Debian package clang-format; scripts/install-deps.sh)" >&2
    exit 1
  fi
  if ((write)); then
    clang-format -i --style=file "${c_files[@]}" || status=1
  else
    log=$(mktemp)
    clang-format --dry-run -Werror --style=file "${c_files[@]}" 2>"$log" || {
      # One line per offending file instead of every diagnostic (all of them if it failed otherwise).
      if grep -q 'clang-format-violations' "$log"; then
        grep 'clang-format-violations' "$log" | cut -d: -f1 | sort -u | sed 's/^/[warn] /' >&2
      else
        cat "$log" >&2
      fi
      echo "check-format: clang-format would change the files above (npm run format)" >&2
      status=1
    }
    rm -f "$log"
  fi
fi

exit "$status"
