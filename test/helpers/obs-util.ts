// Helpers of the caching and observability tests (cache, control, observability).
import type { ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { type MountStats } from '../../lib';
import { tmpfs } from './overlay-util';
import { umountLazy } from './proc-util';

/**
 * What a path looks like, as one comparable string: 'ENOENT', 'file 644 <content>',
 * 'dir 755 [a,b]' or 'link -> target'. Read with plain system calls, through a mount or not.
 */
export function view(p: string): string {
  // Errors anywhere are part of the view, not a failure: while invalidations arrive, the name
  // may still be cached when the object behind it is already gone (lstat, then readdir ENOENT).
  try {
    const st = fs.lstatSync(p);
    const mode = (st.mode & 0o7777).toString(8);
    if (st.isSymbolicLink()) return `link -> ${fs.readlinkSync(p)}`;
    if (st.isDirectory()) return `dir ${mode} [${fs.readdirSync(p).sort().join(',')}]`;
    if (st.isFile()) {
      const data = fs.readFileSync(p, 'latin1');
      // The size the kernel reports is cached apart from the data: both must be right.
      return `file ${mode} size=${st.size} ${JSON.stringify(data)}`;
    }
    return `other ${mode}`;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code ?? 'error';
  }
}

/** view() of each name under root ('' is root itself). */
export function views(root: string, names: readonly string[]): Record<string, string> {
  return Object.fromEntries(names.map((n) => [n, view(path.join(root, n))]));
}

/**
 * Polls probe until accept() holds or timeoutMs passed (generous: never a timing assertion) and
 * returns the last value, for the test to assert on (so a failure shows what was seen).
 */
export async function eventually<T>(
  probe: () => T | Promise<T>,
  accept: (v: T) => boolean,
  timeoutMs = 10_000,
  intervalMs = 20,
): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (accept(v) || Date.now() > end) return v;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Deep equality of plain JSON values (for eventually()). */
export function same(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/**
 * A private tmpfs for the test under a fresh directory: fanotify marks a whole filesystem and its
 * queue overflows with everything happening there, so tests that count invalidations or provoke
 * overflows must not share a filesystem with other tests (or other people's processes).
 */
export function privateFs(t: ExecutionContext, dir: string, size = '256m'): void {
  fs.mkdirSync(dir, { recursive: true });
  tmpfs(t, dir, size);
}

/** Frees the kernel's dentries and inodes, so it sends FORGETs (affects the whole machine). */
export function dropCaches(): void {
  fs.writeFileSync('/proc/sys/vm/drop_caches', '2');
}

/** The sum of an operation's log2 latency buckets. */
export function bucketSum(s: MountStats, op: string): number {
  return (s.ops[op]?.latencyLog2Ns ?? []).reduce((a, b) => a + b, 0);
}

export const count = (s: MountStats, op: string): number => s.ops[op]?.count ?? 0;
export const errnoCount = (s: MountStats, op: string, errno: string): number =>
  s.ops[op]?.errnos[errno] ?? 0;

/** An OCI-less kernel-style whiteout (0/0 character device) made directly in an upper layer. */
export function whiteout(p: string): void {
  execFileSync('mknod', [p, 'c', '0', '0']);
}

/** Detaches a leftover mount quietly (teardown after a failure). */
export function detach(dir: string): void {
  umountLazy(dir);
}
