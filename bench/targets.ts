// Benchmark targets: something that, once set up, offers a directory holding the fixture
// (rootfs/, data.bin) and a scratch work/ directory. Adding a target (e.g. an overlay: kernel
// overlayfs, fusekit overlay, fuse-overlayfs) means adding a factory here and an entry to
// allTargets(); the workloads only see the directory.
import { type ChildProcess, spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';

import type { MountOptions } from '../lib';
import { ensureSource } from './fixture';
import {
  check,
  exists,
  FIXTURES,
  forceUnmount,
  isMounted,
  pinned,
  REPO_DIR,
  run,
  sleep,
} from './util';

export interface TargetContext {
  /** CPU list for taskset (daemons and workloads), or undefined when unpinned. */
  cpus: string | undefined;
  /** Size of data.bin in bytes. */
  size: number;
}

export interface Target {
  /** Name in tables and BENCH_FILTER. */
  readonly name: string;
  /** Short note for the table legend (options that matter for the comparison). */
  readonly note: string;
  /** Kernel features the target needs (so the runner can enable FUSE-over-io_uring). */
  readonly needsUring?: boolean;
  /** Creates the fixtures the target needs (slow, once), before anything is timed. */
  prepare(size: number): Promise<void>;
  /** Mounts (or prepares) and returns the directory the workloads use. */
  setup(ctx: TargetContext): Promise<string>;
  /** Removes whatever setup() made; must be safe to call after a failed or partial setup. */
  teardown(): Promise<void>;
  /** Daemon-side counters (cumulative since setup), for the raw results and the analysis. */
  snapshot?(): Promise<unknown>;
  /** CPU seconds used so far by the target's daemon, all threads (absent without a daemon). */
  cpuSeconds?(): Promise<number>;
  /** How the target really ran (e.g. the transport fusekit negotiated), filled in by setup(). */
  info?: Record<string, unknown>;
}

/** Slug for directory names. */
function slug(name: string): string {
  return name
    .replace(/[^A-Za-z0-9]+/g, '-')
    .replace(/^-|-$/g, '')
    .toLowerCase();
}

async function prepareScratch(dir: string): Promise<void> {
  // Leftovers of an interrupted run would change what the next run measures.
  await fsp.rm(path.join(dir, 'work'), { recursive: true, force: true });
  await fsp.mkdir(path.join(dir, 'work'));
}

/** The source directory itself: the baseline every ratio is relative to. */
export function nativeTarget(): Target {
  const name = 'native';
  return {
    name,
    note: 'the source directory on ext4, no FUSE',
    async prepare(size) {
      await ensureSource(slug(name), size);
    },
    async setup(ctx) {
      const src = await ensureSource(slug(name), ctx.size);
      await prepareScratch(src.dir);
      return src.dir;
    },
    async teardown() {},
  };
}

/** A daemon process serving a FUSE mount of a source directory. */
abstract class DaemonTarget implements Target {
  abstract readonly name: string;
  abstract readonly note: string;
  needsUring?: boolean;
  info?: Record<string, unknown>;
  protected child: ChildProcess | undefined;
  protected mountpoint = '';
  protected stderr = '';

  protected abstract command(src: string, mnt: string): [string, string[]];
  /** Resolves once the mount is usable. */
  protected abstract waitReady(child: ChildProcess): Promise<void>;

  async prepare(size: number): Promise<void> {
    await ensureSource(slug(this.name), size);
  }

  async setup(ctx: TargetContext): Promise<string> {
    const src = await ensureSource(slug(this.name), ctx.size);
    this.mountpoint = path.join(FIXTURES, 'mnt', slug(this.name));
    await fsp.mkdir(this.mountpoint, { recursive: true });
    await forceUnmount(this.mountpoint);
    // Whatever sits in the bare mount point (an interrupted run writing on) would fail the mount.
    for (const e of await fsp.readdir(this.mountpoint))
      await fsp.rm(path.join(this.mountpoint, e), { recursive: true, force: true });
    await prepareScratch(src.dir);
    const [cmd, args] = pinned(ctx.cpus, ...this.command(src.dir, this.mountpoint));
    this.stderr = '';
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    this.child = child;
    child
      .stderr!.setEncoding('utf8')
      .on('data', (d: string) => (this.stderr = (this.stderr + d).slice(-4000)));
    const exited = new Promise<never>((_, reject) =>
      child.on('exit', (code, sig) =>
        reject(
          new Error(
            `${this.name}: daemon exited (${sig ?? code}) before the mount was ready: ${this.stderr.trim()}`,
          ),
        ),
      ),
    );
    exited.catch(() => undefined);
    const timeout = sleep(30_000).then(() => {
      throw new Error(`${this.name}: mount not ready after 30 s: ${this.stderr.trim()}`);
    });
    await Promise.race([this.waitReady(child), exited, timeout]);
    return this.mountpoint;
  }

  async teardown(): Promise<void> {
    const child = this.child;
    this.child = undefined;
    if (child && child.exitCode === null && child.signalCode === null) {
      const gone = new Promise<void>((r) => child.once('exit', () => r()));
      this.stop(child);
      if (
        (await Promise.race([gone.then(() => true), sleep(10_000).then(() => false)])) === false
      ) {
        // A daemon that does not stop in time must not keep the mount (or the bench) alive.
        child.kill('SIGKILL');
        await gone;
      }
    }
    if (this.mountpoint) await forceUnmount(this.mountpoint);
  }

  protected stop(child: ChildProcess): void {
    child.kill('SIGTERM');
  }

  async cpuSeconds(): Promise<number> {
    // schedstat's first field is the thread's time on a CPU in ns; summing the threads gives ns
    // resolution where /proc/<pid>/stat has 10 ms ticks. The daemons keep their request threads,
    // so (almost) no thread's time goes missing by exiting between two readings.
    const pid = this.child?.pid;
    if (pid === undefined) return 0;
    const dir = `/proc/${pid}/task`;
    let ns = 0;
    for (const tid of await fsp.readdir(dir).catch(() => [] as string[])) {
      const s = await fsp.readFile(`${dir}/${tid}/schedstat`, 'utf8').catch(() => '0');
      ns += Number(s.split(' ')[0]) || 0;
    }
    return ns / 1e9;
  }
}

/** fusekit, in its own Node process (bench/serve.ts). */
class FusekitTarget extends DaemonTarget {
  constructor(
    readonly name: string,
    readonly note: string,
    private readonly options: Omit<MountOptions, 'source' | 'mountpoint'>,
  ) {
    super();
    this.needsUring = options.transport === 'io_uring';
  }

  protected command(src: string, mnt: string): [string, string[]] {
    const opts: MountOptions = { source: src, mountpoint: mnt, ...this.options };
    return [
      process.execPath,
      ['--import=tsx', path.join(__dirname, 'serve.ts'), JSON.stringify(opts)],
    ];
  }

  private statsWaiters: ((s: unknown) => void)[] = [];

  protected waitReady(child: ChildProcess): Promise<void> {
    this.statsWaiters = [];
    return new Promise((resolve) => {
      const rl = readline.createInterface({ input: child.stdout! });
      rl.on('line', (line) => {
        if (line.startsWith('ready ')) {
          this.info = JSON.parse(line.slice(6)) as Record<string, unknown>;
          resolve();
        } else if (line.startsWith('stats ')) {
          this.statsWaiters.shift()?.(JSON.parse(line.slice(6)));
        }
      });
    });
  }

  snapshot(): Promise<unknown> {
    const child = this.child;
    if (!child?.stdin?.writable) return Promise.resolve(undefined);
    return new Promise((resolve) => {
      this.statsWaiters.push(resolve);
      child.stdin!.write('stats\n');
    });
  }

  protected override stop(child: ChildProcess): void {
    // Closing stdin asks serve.ts to print its stats and unmount.
    child.stdin?.end();
  }
}

export const PASSTHROUGH_HP = path.join(REPO_DIR, 'deps', 'libfuse', 'bin', 'passthrough_hp');

/** libfuse's example passthrough daemon, the peer to beat. */
class PassthroughHpTarget extends DaemonTarget {
  constructor(
    readonly name: string,
    readonly note: string,
    private readonly args: string[],
  ) {
    super();
    this.needsUring = args.includes('io_uring');
  }

  protected command(src: string, mnt: string): [string, string[]] {
    return [PASSTHROUGH_HP, ['--foreground', ...this.args, src, mnt]];
  }

  protected async waitReady(child: ChildProcess): Promise<void> {
    // passthrough_hp says nothing when ready: poll for the mount, then for a served request.
    child.stdout!.resume();
    for (;;) {
      if (await isMounted(this.mountpoint)) {
        await fsp.stat(path.join(this.mountpoint, 'data.bin'));
        this.info = { pid: child.pid };
        return;
      }
      await sleep(20);
    }
  }
}

/** Timeouts of passthrough_hp (it caches names, attributes and misses for 86400 s). */
const HP_TIMEOUTS = { entryTimeout: 86400, attrTimeout: 86400, negativeTimeout: 86400 } as const;

/** Every target the bench knows, in table order; native first (ratios are relative to it). */
export function allTargets(): Target[] {
  const fk = (pt: 'on' | 'off', transport: 'dev' | 'io_uring'): Target =>
    new FusekitTarget(
      `fusekit pt=${pt} ${transport}`,
      `passthrough ${pt}, transport ${transport}, 86400 s caches`,
      {
        passthrough: pt,
        transport,
        ...HP_TIMEOUTS,
      },
    );
  return [
    nativeTarget(),
    fk('on', 'dev'),
    fk('on', 'io_uring'),
    fk('off', 'dev'),
    fk('off', 'io_uring'),
    new FusekitTarget(
      'fusekit defaults',
      'no options: passthrough auto, transport auto, 1 s entry/attr caches, no negative cache',
      {},
    ),
    new PassthroughHpTarget(
      'passthrough_hp',
      'default: passthrough, /dev/fuse, 86400 s caches',
      [],
    ),
    new PassthroughHpTarget(
      'passthrough_hp nopt',
      '--nopassthrough (it then enables the writeback cache)',
      ['--nopassthrough'],
    ),
    new PassthroughHpTarget('passthrough_hp io_uring', '-o io_uring, passthrough', [
      '-o',
      'io_uring',
    ]),
  ];
}

/** Checks the tools the targets need, once, before anything is mounted. */
export async function checkTargetTools(targets: Target[]): Promise<void> {
  if (targets.some((t) => t instanceof PassthroughHpTarget) && !(await exists(PASSTHROUGH_HP)))
    throw new Error(`${PASSTHROUGH_HP} is missing: run scripts/build-libfuse.sh`);
  if (targets.some((t) => t instanceof DaemonTarget)) {
    if ((await run('sh', ['-c', 'command -v fusermount3'])).code !== 0)
      await check('apt-get', ['install', '-y', 'fuse3']);
  }
}
