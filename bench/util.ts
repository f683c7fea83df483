// Small process and file-system helpers shared by the bench modules.
import { type ChildProcess, spawn, type SpawnOptions } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';

export const BENCH_DIR = __dirname;
export const REPO_DIR = path.dirname(__dirname);
// BENCH_FIXTURES: another filesystem for the fixtures (the filesystem under them is part of every
// figure: e.g. ext4 without a journal slows creates after deletes).
export const FIXTURES = process.env.BENCH_FIXTURES
  ? path.resolve(process.env.BENCH_FIXTURES)
  : path.join(BENCH_DIR, 'fixtures');
export const RESULTS = path.join(BENCH_DIR, 'results');
export const BUILD = path.join(BENCH_DIR, '.build');

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Wall time of the child process, in seconds. */
  seconds: number;
}

/** Children still running, so an interrupt can stop them before mounts are removed. */
export const liveChildren = new Set<ChildProcess>();

/** Runs a command to completion and collects its output; never throws on a non-zero exit. */
export function run(cmd: string, args: string[], opts: SpawnOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const start = process.hrtime.bigint();
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
    liveChildren.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout?.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', (e) => {
      liveChildren.delete(child);
      reject(e);
    });
    child.on('close', (code, signal) => {
      liveChildren.delete(child);
      const seconds = Number(process.hrtime.bigint() - start) / 1e9;
      resolve({ code, signal, stdout, stderr, seconds });
    });
  });
}

/** Like run() but throws with the command's stderr when it fails. */
export async function check(
  cmd: string,
  args: string[],
  opts: SpawnOptions = {},
): Promise<RunResult> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) {
    const what = [cmd, ...args].join(' ');
    throw new Error(
      `${what} failed (${r.signal ?? r.code}): ${(r.stderr || r.stdout).trim().slice(-2000)}`,
    );
  }
  return r;
}

/** `taskset -c <cpus>` prefix for a command, or the command itself when unpinned. */
export function pinned(cpus: string | undefined, cmd: string, args: string[]): [string, string[]] {
  return cpus === undefined ? [cmd, args] : ['taskset', ['-c', cpus, cmd, ...args]];
}

/** Writes back dirty data and empties the page, dentry and inode caches (cold runs). */
export async function dropCaches(): Promise<void> {
  await check('sync', []);
  await fsp.writeFile('/proc/sys/vm/drop_caches', '3\n');
}

export async function exists(p: string): Promise<boolean> {
  try {
    await fsp.lstat(p);
    return true;
  } catch {
    return false;
  }
}

/** Mount points (unescaped) under a prefix, deepest first, from /proc/self/mountinfo. */
export async function mountsUnder(prefix: string): Promise<string[]> {
  const info = await fsp.readFile('/proc/self/mountinfo', 'utf8');
  const out: string[] = [];
  for (const line of info.split('\n')) {
    const f = line.split(' ');
    if (f.length < 5) continue;
    const mp = f[4]!.replace(/\\([0-7]{3})/g, (_, o: string) =>
      String.fromCharCode(parseInt(o, 8)),
    );
    if (mp === prefix || mp.startsWith(prefix + '/')) out.push(mp);
  }
  return out.sort((a, b) => b.length - a.length);
}

export async function isMounted(dir: string): Promise<boolean> {
  return (await mountsUnder(dir)).includes(dir);
}

/** Removes a mount however it was made; lazy so a stuck daemon cannot block the cleanup. */
export async function forceUnmount(dir: string): Promise<void> {
  for (let i = 0; i < 5 && (await isMounted(dir)); i++) {
    const r = await run('umount', [dir]);
    if (r.code !== 0) await run('umount', ['-l', dir]);
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  if (n === 0) return NaN;
  return n % 2 ? s[(n - 1) / 2]! : (s[n / 2 - 1]! + s[n / 2]!) / 2;
}

/** Parses sizes like 1G, 64M, 4k (powers of 1024). */
export function parseSize(s: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?$/i.exec(s.trim());
  if (!m) throw new Error(`bad size '${s}' (use e.g. 1G, 64M)`);
  const mult = { '': 1, k: 1 << 10, m: 1 << 20, g: 1 << 30, t: 2 ** 40 }[m[2]!.toLowerCase()]!;
  return Math.round(Number(m[1]) * mult);
}

export function formatSize(n: number): string {
  for (const [u, v] of [
    ['G', 2 ** 30],
    ['M', 2 ** 20],
    ['k', 2 ** 10],
  ] as const)
    if (n >= v && n % v === 0) return `${n / v}${u}`;
  return `${n}`;
}

export function log(msg: string): void {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

async function cpuTimes(): Promise<{ busy: number; total: number }> {
  const line = (await fsp.readFile('/proc/stat', 'utf8')).split('\n')[0]!;
  // cpu user nice system idle iowait irq softirq steal ...
  const f = line.trim().split(/\s+/).slice(1, 9).map(Number);
  const idle = f[3]! + f[4]!;
  const total = f.reduce((a, b) => a + b, 0);
  return { busy: total - idle, total };
}

/** Share of all CPUs' time spent busy over the next `ms` milliseconds. */
export async function busyShare(ms: number): Promise<number> {
  const a = await cpuTimes();
  await sleep(ms);
  const b = await cpuTimes();
  return b.total > a.total ? (b.busy - a.busy) / (b.total - a.total) : 0;
}

/**
 * Waits (up to maxSeconds) until the machine is quiet, i.e. less than `threshold` of the CPUs
 * busy while the bench itself is idle, so another process's burst does not land in one sample.
 * Returns the last busy share seen.
 */
export async function waitQuiet(maxSeconds: number, threshold = 0.15): Promise<number> {
  const deadline = Date.now() + maxSeconds * 1000;
  for (;;) {
    const b = await busyShare(250);
    if (b < threshold || Date.now() >= deadline) return b;
  }
}
