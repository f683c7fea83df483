// Wrapper of test/helpers/idmap-tools.c (kernel idmapped bind mounts as the reference for fusekit's
// idmap, a euid printer for the nosuid check, a RENAME_EXCHANGE racer, a fast tree maker), built
// with cc on first use into build/test-helpers (gitignored).
import type { ExecutionContext } from 'ava';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, renameSync, statSync } from 'node:fs';
import * as path from 'node:path';

import { packageRoot } from '../../lib/native';
import { fsopsPath } from './fsops';

let binary: string | undefined;

/** Path of the compiled helper (rebuilt when the source is newer). */
export function toolsPath(): string {
  if (binary) return binary;
  const root = packageRoot();
  const src = path.join(root, 'test', 'helpers', 'idmap-tools.c');
  const dir = path.join(root, 'build', 'test-helpers');
  const out = path.join(dir, 'idmap-tools');
  const fresh = (): boolean => existsSync(out) && statSync(out).mtimeMs >= statSync(src).mtimeMs;
  if (!fresh()) {
    mkdirSync(dir, { recursive: true });
    // Several test files build it at once: compile under a lock, into a temporary name.
    const tmp = `${out}.${process.pid}`;
    execFileSync('flock', [path.join(dir, '.lock'), 'cc', '-O2', '-Wall', '-o', tmp, src], {
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    renameSync(tmp, out);
  }
  binary = out;
  return out;
}

/** Runs the helper; throws with its stderr when it fails. */
export function tools(args: string[], options: { uid?: number; gid?: number } = {}): string {
  const r = spawnSync(toolsPath(), args, { encoding: 'utf8', ...options });
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`idmap-tools ${args.join(' ')}: ${r.stderr.trim()}`);
  return r.stdout;
}

function mounted(dir: string): boolean {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .some((l) => l.split(' ')[4] === dir);
}

export interface Range {
  inside: number;
  outside: number;
  count: number;
}

const mapText = (r: Range[]): string =>
  r.map((x) => `${x.inside} ${x.outside} ${x.count}`).join('\n');

/**
 * A kernel idmapped bind mount of src at dst (an existing empty directory) with the same ranges
 * fusekit's idmap takes; detached in teardown whatever the test did.
 */
export function kernelIdmapped(
  t: ExecutionContext,
  src: string,
  dst: string,
  uid: Range[],
  gid: Range[] = uid,
): void {
  t.teardown(() => {
    // The mount is ours (the test made it); lazily, in case a failed test left it busy.
    if (mounted(dst)) spawnSync('umount', ['-l', dst], { stdio: 'ignore' });
  });
  tools(['idmapped', src, dst, mapText(uid), mapText(gid)]);
}

/** A process identity: host uid/gid and supplementary groups (none unless given). */
export interface Caller {
  uid: number;
  gid: number;
  groups?: number[];
}

/** argv prefix that runs a command as `c` (setpriv: exact ids and group list). */
export function asCallerArgv(c: Caller): string[] {
  const groups = c.groups?.length ? `--groups=${c.groups.join(',')}` : '--clear-groups';
  return ['setpriv', `--reuid=${c.uid}`, `--regid=${c.gid}`, groups, '--'];
}

/** Runs one fsops command as `c` (with umask 0 unless given); its errno name or 'OK'. */
export function fsopsAs(c: Caller, args: (string | number)[], umask = 0): string {
  return fsopsReplyAs(c, args, umask).errno ?? 'OK';
}

/** Runs one fsops command as `c`; the JSON reply (errors included as { errno, op }). */
export function fsopsReplyAs(
  c: Caller,
  args: (string | number)[],
  umask = 0,
): Record<string, unknown> & { errno?: string } {
  const argv = [...asCallerArgv(c), fsopsPath(), '-u', umask.toString(8), ...args.map(String)];
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8' });
  if (r.error) throw r.error;
  const line = r.stdout.trim().split('\n').pop() ?? '';
  if (!line.startsWith('{'))
    throw new Error(`${argv.join(' ')}: no reply (${r.status}) ${r.stderr}`);
  return JSON.parse(line) as Record<string, unknown> & { errno?: string };
}
