// Process and mount-table helpers for tests that run fusekit (or load) in child processes.
import type { ExecutionContext } from 'ava';
import { type ChildProcess, type SpawnOptions, spawn, spawnSync } from 'node:child_process';
import { promises as fsp, readFileSync, readdirSync, statSync } from 'node:fs';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';

/** The repository root: children run `node --import tsx` from there. */
export const repoRoot = path.resolve(__dirname, '..', '..');

function unescapeMountinfo(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

export interface MountEntry {
  mountpoint: string;
  fstype: string;
  source: string;
  options: string;
}

/** The mounts of this process's mount namespace. */
export function mountTable(): MountEntry[] {
  const out: MountEntry[] = [];
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    if (!line) continue;
    const f = line.split(' ');
    const sep = f.indexOf('-');
    out.push({
      mountpoint: unescapeMountinfo(f[4]!),
      options: f[5]!,
      fstype: f[sep + 1]!,
      source: unescapeMountinfo(f[sep + 2]!),
    });
  }
  return out;
}

/** Whether dir is a mount point (of anything) in this namespace. */
export function isMounted(dir: string): boolean {
  return mountTable().some((e) => e.mountpoint === dir);
}

/** Polls cond until it holds; throws after `timeoutMs` (generous: never a timing assertion). */
export async function waitFor(
  what: string,
  cond: () => boolean | Promise<boolean>,
  timeoutMs = 30_000,
  intervalMs = 25,
): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (await cond()) return;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** Resolves with `p` or rejects when it does not settle within timeoutMs (a hang, not timing). */
export async function within<T>(what: string, p: Promise<T>, timeoutMs = 30_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`${what} did not finish within ${timeoutMs} ms`)),
      timeoutMs,
    );
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Lazily detaches dir if it is still mounted (teardown after a failed test). */
export function umountLazy(dir: string): void {
  if (isMounted(dir)) spawnSync('umount', ['-l', dir], { stdio: 'ignore' });
}

/** A snapshot of a tree: relative path -> content (files), '<dir>', '-> target' (symlinks) or
 * '<special>' (fifos, sockets, devices: never opened, a fifo would block). */
export async function snapshot(root: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  async function walk(dir: string, rel: string): Promise<void> {
    const entries = await fsp.readdir(dir, { withFileTypes: true });
    for (const e of entries) {
      const p = path.join(dir, e.name);
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) {
        out[r] = '<dir>';
        await walk(p, r);
      } else if (e.isSymbolicLink()) {
        out[r] = '-> ' + (await fsp.readlink(p));
      } else if (!e.isFile()) {
        out[r] = '<special>';
      } else {
        out[r] = (await fsp.readFile(p)).toString('base64');
      }
    }
  }
  await walk(root, '');
  return out;
}

export interface ChildResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion, collecting its output; killed after timeoutMs. */
export function run(
  cmd: string,
  args: string[],
  options: SpawnOptions & { timeoutMs?: number; input?: string } = {},
): Promise<ChildResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: repoRoot, stdio: ['pipe', 'pipe', 'pipe'], ...options });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 60_000);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
    // A child that exits without reading its input must not fail the test with EPIPE.
    child.stdin!.on('error', () => undefined);
    child.stdin!.end(options.input ?? '');
  });
}

// By absolute URL: a bare `tsx` would be resolved from the child's cwd, which may be a mount.
const tsxLoader = pathToFileURL(
  path.join(repoRoot, 'node_modules', 'tsx', 'dist', 'loader.mjs'),
).href;

/** `node --import tsx <script> ...args` as argv for spawn, for wrapping in unshare/setpriv. */
export function nodeArgv(script: string, ...args: string[]): string[] {
  return [process.execPath, '--import', tsxLoader, path.join(repoRoot, script), ...args];
}

/** Parses the last JSON line a child printed. */
export function lastJson<T = Record<string, unknown>>(stdout: string): T {
  const lines = stdout
    .trim()
    .split('\n')
    .filter((l) => l.startsWith('{'));
  if (lines.length === 0) throw new Error(`child printed no JSON: ${JSON.stringify(stdout)}`);
  return JSON.parse(lines[lines.length - 1]!) as T;
}

/** A long-running child speaking JSON lines on stdout; killed (and mount detached) in teardown. */
export class JsonChild {
  readonly proc: ChildProcess;
  readonly messages: Record<string, unknown>[] = [];
  stderr = '';
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  #waiters: (() => void)[] = [];
  #closed = false;

  constructor(argv: string[], options: SpawnOptions = {}) {
    this.proc = spawn(argv[0]!, argv.slice(1), {
      cwd: repoRoot,
      stdio: ['pipe', 'pipe', 'pipe'],
      ...options,
    });
    this.proc.stdin?.on('error', () => undefined); // EPIPE once the child has gone
    let buf = '';
    this.proc.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (line.startsWith('{')) {
          try {
            this.messages.push(JSON.parse(line) as Record<string, unknown>);
          } catch {
            // not ours
          }
        }
        this.#notify();
      }
    });
    this.proc.stderr!.on('data', (d: Buffer) => {
      this.stderr += d.toString();
    });
    // 'close', not 'exit': only then has everything the child wrote been read.
    this.exited = new Promise((resolve) => {
      this.proc.on('close', (code, signal) => {
        this.#closed = true;
        resolve({ code, signal });
        this.#notify();
      });
    });
  }

  #notify(): void {
    const w = this.#waiters;
    this.#waiters = [];
    for (const f of w) f();
  }

  get running(): boolean {
    return !this.#closed;
  }

  /** Waits for the first message satisfying pred (rejects if the child exits first). */
  async message(
    pred: (m: Record<string, unknown>) => boolean = () => true,
    timeoutMs = 60_000,
  ): Promise<Record<string, unknown>> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const found = this.messages.find(pred);
      if (found) return found;
      if (!this.running)
        throw new Error(
          `child exited (${this.proc.exitCode ?? this.proc.signalCode}) before the message; ` +
            `said ${JSON.stringify(this.messages)}; stderr: ${this.stderr}`,
        );
      if (Date.now() > end) throw new Error(`no message from child; stderr: ${this.stderr}`);
      await new Promise<void>((r) => {
        const timer = setTimeout(r, 200);
        this.#waiters.push(() => {
          clearTimeout(timer);
          r();
        });
      });
    }
  }

  send(line: string): void {
    this.proc.stdin!.write(line + '\n');
  }

  kill(sig: NodeJS.Signals = 'SIGKILL'): void {
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill(sig);
  }
}

/** Spawns a JsonChild and registers teardown: kill it, wait for it, detach mounts it left. */
export function spawnChild(
  t: ExecutionContext,
  argv: string[],
  options: SpawnOptions & { mountpoints?: string[] } = {},
): JsonChild {
  const { mountpoints = [], ...spawnOptions } = options;
  const c = new JsonChild(argv, spawnOptions);
  t.teardown(async () => {
    c.kill('SIGKILL');
    await within('child exit', c.exited, 10_000).catch(() => undefined);
    for (const mp of mountpoints) {
      // The watchdog normally removes it; do not leave it behind if it did not.
      await waitFor(`${mp} unmounted`, () => !isMounted(mp), 5_000).catch(() => umountLazy(mp));
    }
  });
  return c;
}

/** Processes whose command line contains every one of the given strings. */
export function findProcesses(...needles: string[]): number[] {
  const out: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d) || Number(d) === process.pid) continue;
    try {
      const cmd = readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0');
      if (needles.every((n) => cmd.some((a) => a.includes(n)))) out.push(Number(d));
    } catch {
      // gone
    }
  }
  return out;
}

/** st_dev of a path, to tell whether a FUSE mount is on it. */
export function devOf(p: string): number {
  return statSync(p).dev;
}

/** The bytes every reader expects and every writer writes: a function of offset only. */
export function pattern(size: number, seed: number): Buffer {
  const b = Buffer.alloc(size);
  for (let i = 0; i < size; i++) b[i] = (Math.imul(i, 2654435761) + seed) >>> 24;
  return b;
}

/**
 * argv prefix running a command in a private mount namespace after `setup` (sh) ran there. The
 * copy of every FUSE mount but `keep` is detached first: a copy pins the mount's filesystem, so
 * it would keep mounts of concurrently running tests alive after they unmount them.
 */
export function inPrivateNamespace(setup: string, keep = ''): string[] {
  const detachFuse =
    'for m in $(awk \'{for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i+1) ~ /^fuse/) print $5; break }}\' /proc/self/mountinfo); do [ "$m" = "$1" ] || umount -l "$m" 2>/dev/null; done; shift';
  return [
    'unshare',
    '-m',
    '--propagation',
    'private',
    'sh',
    '-c',
    `${detachFuse}; ${setup} && exec "$@"`,
    'sh',
    keep,
  ];
}
