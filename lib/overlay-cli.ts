#!/usr/bin/env node
/**
 * fusekit-overlay: a fuse-overlayfs compatible mount program for podman/containers-storage.
 *
 * Called as `fusekit-overlay -o OPTS MERGED` (stdin/stdout on /dev/null, stderr a pipe podman reads
 * until it closes). Exits 0 only once the overlay is live, leaving a daemon that holds neither
 * stdout nor stderr; `fusermount3 -u MERGED` ends the mount and the daemon exits by itself.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';

import { FusekitError } from './errors';
import { type IdRange, parseColonIdMap } from './idmap';
import { mount } from './mount';
import { native, packageRoot } from './native';
import type { MountOptions } from './options';

export interface OverlayCliOptions {
  lower: string[];
  upper?: string;
  work?: string;
  volatile: boolean;
  uidmapping?: string;
  gidmapping?: string;
  squashToUid?: number;
  squashToGid?: number;
  warnings: string[];
}

/** Splits `a=1,,b="x,y",c` at commas outside double quotes. */
export function splitOptions(opts: string): string[] {
  const out: string[] = [];
  let cur = '';
  let quoted = false;
  for (const ch of opts) {
    if (ch === '"') quoted = !quoted;
    if (ch === ',' && !quoted) {
      out.push(cur);
      cur = '';
    } else {
      cur += ch;
    }
  }
  out.push(cur);
  return out.filter((o) => o.length > 0);
}

export function parseOverlayOptions(opts: string): OverlayCliOptions {
  const r: OverlayCliOptions = { lower: [], volatile: false, warnings: [] };
  for (const opt of splitOptions(opts)) {
    const eq = opt.indexOf('=');
    const key = eq < 0 ? opt : opt.slice(0, eq);
    const value = eq < 0 ? '' : opt.slice(eq + 1);
    switch (key) {
      case 'lowerdir':
        r.lower = value.split(':').filter((l) => l.length > 0);
        break;
      case 'upperdir':
        r.upper = value;
        break;
      case 'workdir':
        r.work = value;
        break;
      case 'volatile':
        r.volatile = true;
        break;
      case 'uidmapping':
        r.uidmapping = value;
        break;
      case 'gidmapping':
        r.gidmapping = value;
        break;
      case 'squash_to_uid':
        r.squashToUid = Number(value);
        break;
      case 'squash_to_gid':
        r.squashToGid = Number(value);
        break;
      case 'squash_to_root':
        r.squashToUid = 0;
        r.squashToGid = 0;
        break;
      case 'context':
      case 'fscontext':
      case 'defcontext':
      case 'rootcontext':
        // SELinux labels: this machine has no SELinux; the mount is not labelled.
        r.warnings.push(`${key} ignored (no SELinux support)`);
        break;
      case 'xattr_permissions':
        r.warnings.push('xattr_permissions ignored: xattrs are checked by the kernel as usual');
        break;
      default:
        r.warnings.push(`unknown option ${opt} ignored`);
    }
  }
  return r;
}

function version(): string {
  const pkg = JSON.parse(readFileSync(path.join(packageRoot(), 'package.json'), 'utf8')) as {
    version: string;
  };
  const v = native().capabilities().libfuseVersion;
  return `fusekit-overlay: version ${pkg.version}\nFUSE library version ${Math.floor(v / 100)}.${v % 100}\n`;
}

function usage(): string {
  return 'usage: fusekit-overlay -o lowerdir=L1:L2[,upperdir=U,workdir=W][,volatile] MERGED\n';
}

/**
 * fuse-overlayfs's `uidmapping=C:H:N`: container id C is the id the mount shows (its callers' id),
 * H the id stored in the layers. fusekit's ranges say the same as { inside: H, outside: C }.
 */
function overlayfsMapping(spec: string | undefined): IdRange[] | undefined {
  if (spec === undefined) return undefined;
  return parseColonIdMap(spec).map((r) => ({
    inside: r.outside,
    outside: r.inside,
    count: r.count,
  }));
}

/** A shown (container) id as stored in the layers, through the map. */
function storedId(id: number, ranges: IdRange[] | undefined): number {
  for (const r of ranges ?? [])
    if (id >= r.outside && id < r.outside + r.count) return r.inside + id - r.outside;
  if (ranges && ranges.length)
    throw new FusekitError('EINVAL', `squash id ${id} is not in the id mapping`);
  return id;
}

/** The options mount() takes for these overlay options. */
export function toMountOptions(o: OverlayCliOptions, merged: string): MountOptions {
  if (o.lower.length === 0) throw new FusekitError('EINVAL', 'no lowerdir given');
  const uid = overlayfsMapping(o.uidmapping);
  const gid = overlayfsMapping(o.gidmapping);
  const squash: { uid?: number; gid?: number } = {};
  if (o.squashToUid !== undefined) squash.uid = storedId(o.squashToUid, uid);
  if (o.squashToGid !== undefined) squash.gid = storedId(o.squashToGid, gid);
  const idmap =
    uid || gid || Object.keys(squash).length
      ? {
          ...(uid ? { uid } : {}),
          ...(gid ? { gid } : {}),
          ...(Object.keys(squash).length ? { squash } : {}),
        }
      : undefined;
  return {
    ...(idmap ? { idmap } : {}),
    mountpoint: merged,
    overlay: {
      lower: o.lower,
      ...(o.upper !== undefined ? { upper: o.upper } : {}),
      ...(o.work !== undefined ? { work: o.work } : {}),
      ociWhiteouts: true,
      volatile: o.volatile,
    },
    fsname: 'fusekit-overlay',
    subtype: 'fusekit-overlay',
    allowOther: true,
    // podman mounts container roots over whatever directory it prepared.
    allowNonEmpty: true,
    devices: true,
    suid: true,
  };
}

/** The daemon side: mounts, reports to the parent over IPC, serves until unmounted. */
async function daemon(opts: string, merged: string): Promise<void> {
  const o = parseOverlayOptions(opts);
  try {
    const m = await mount(toMountOptions(o, merged));
    process.send?.({ ok: true, warnings: o.warnings });
    process.disconnect?.();
    await m.closed;
  } catch (e) {
    const err = FusekitError.from(e);
    process.send?.({ ok: false, message: err.message, warnings: o.warnings }, () =>
      process.exit(1),
    );
  }
}

export async function main(argv: string[]): Promise<number> {
  if (argv[0] === '--version' || argv[0] === '-V') {
    process.stdout.write(version());
    return 0;
  }
  if (argv[0] === '--help' || argv[0] === '-h') {
    process.stdout.write(usage());
    return 0;
  }
  let opts = '';
  const positional: string[] = [];
  let daemonChild = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '-o') opts = opts ? `${opts},${argv[++i] ?? ''}` : (argv[++i] ?? '');
    else if (a.startsWith('-o')) opts = opts ? `${opts},${a.slice(2)}` : a.slice(2);
    else if (a === '--daemon-child') daemonChild = true;
    else if (a === '-f' || a === '--foreground') continue;
    else positional.push(a);
  }
  if (positional.length !== 1) {
    process.stderr.write(usage());
    return 2;
  }
  const merged = path.resolve(positional[0]!);
  if (daemonChild) {
    await daemon(opts, merged);
    return 0;
  }
  return new Promise((resolve) => {
    // Detached, with no stdio of podman's: only the IPC channel, closed once mounted.
    const args = [...process.execArgv, __filename, '-o', opts, merged, '--daemon-child'];
    const child = spawn(process.execPath, args, {
      detached: true,
      stdio: ['ignore', 'ignore', 'ignore', 'ipc'],
    });
    let answered = false;
    child.on('message', (msg: { ok: boolean; message?: string; warnings?: string[] }) => {
      answered = true;
      for (const w of msg.warnings ?? []) process.stderr.write(`fusekit-overlay: warning: ${w}\n`);
      if (msg.ok) {
        child.unref();
        child.disconnect();
        resolve(0);
      } else {
        process.stderr.write(`fusekit-overlay: ${msg.message ?? 'mount failed'}\n`);
        resolve(1);
      }
    });
    child.on('exit', (code) => {
      if (!answered) {
        process.stderr.write(`fusekit-overlay: the daemon exited (${code}) before mounting\n`);
        resolve(1);
      }
    });
  });
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      process.stderr.write(
        `fusekit-overlay: ${err instanceof Error ? err.message : String(err)}\n`,
      );
      process.exitCode = 1;
    },
  );
}
