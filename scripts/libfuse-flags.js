#!/usr/bin/env node
// Prints compiler or linker flags for libfuse >= 3.18.2 (called from binding.gyp).
//
// The system's libfuse is used when pkg-config finds one that new and FUSEKIT_LIBFUSE is not
// "bundled" (prebuilds set it, so they carry libfuse inside). Otherwise the static build in
// deps/libfuse is used, and built first (scripts/build-libfuse.sh) when it is missing.
'use strict';
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const MIN = '3.18.2';
const root = path.resolve(__dirname, '..');
const prefix = process.env.FUSEKIT_DEPS
  ? path.join(process.env.FUSEKIT_DEPS, 'libfuse')
  : path.join(root, 'deps', 'libfuse');
const what = process.argv[2];

function systemFlags() {
  if (process.env.FUSEKIT_LIBFUSE === 'bundled') return null;
  try {
    execFileSync('pkg-config', ['--atleast-version', MIN, 'fuse3'], { stdio: 'ignore' });
  } catch {
    return null;
  }
  const arg = what === '--cflags' ? '--cflags-only-I' : what === '--libs' ? '--libs' : null;
  if (!arg) return '';
  return execFileSync('pkg-config', [arg, 'fuse3'], { encoding: 'utf8' }).trim();
}

function bundledFlags() {
  if (!fs.existsSync(path.join(prefix, '.built'))) {
    try {
      // stdout is gyp's input: the build's progress goes to stderr.
      execFileSync('bash', [path.join(root, 'scripts', 'build-libfuse.sh')], {
        stdio: ['ignore', process.stderr, process.stderr],
      });
    } catch {
      process.stderr.write('fusekit: libfuse >= ' + MIN + ' is not available (see above)\n');
      process.exit(1);
    }
  }
  switch (what) {
    case '--cflags':
      return `-I${prefix}/include/fuse3`;
    case '--libs':
      // Whole libfuse, liburing and libnuma inside the addon; only the N-API entry points exported.
      return [
        `${prefix}/lib/libfuse3.a`,
        '-l:liburing.a',
        `${prefix}/lib/libnuma.a`,
        '-lpthread',
        '-ldl',
        '-lrt',
        '-Wl,--exclude-libs,ALL',
        `-Wl,--version-script=${prefix}/exports.map`,
      ].join(' ');
    default:
      return '';
  }
}

const sys = systemFlags();
process.stdout.write((sys !== null ? sys : bundledFlags()) + '\n');
