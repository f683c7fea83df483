// Benchmark targets: something that, once set up, offers a directory holding a fixture (see
// fixture.ts): the directory itself (native), a FUSE mount of it (fusekit, passthrough_hp), or an
// overlay with it as the lower layer (kernel overlayfs, fusekit overlay, fuse-overlayfs). The
// workloads only see the directory. The suites (suites.ts) pick the targets they compare.
import { type ChildProcess, spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';

import type { MountOptions } from '../lib';
import type { Fixture, FixtureConfig } from './fixture';
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

export interface TargetContext extends FixtureConfig {
  /** CPU list for taskset (daemons and workloads), or undefined when unpinned. */
  cpus: string | undefined;
}

export interface Target {
  /** Name in tables and BENCH_FILTER. */
  readonly name: string;
  /** Short note for the table legend (options that matter for the comparison). */
  readonly note: string;
  /** false: runs unpinned only (a target for information, left out to keep the run short). */
  readonly pinnable?: boolean;
  /** Kernel features the target needs (so the runner can enable FUSE-over-io_uring). */
  readonly needsUring?: boolean;
  /** Commands the target needs, with the Debian package that has them. */
  readonly tools?: { command: string; pkg: string }[];
  /** Creates the fixtures the target needs (slow, once), before anything is timed. */
  prepare(cfg: FixtureConfig): Promise<void>;
  /** Mounts (or prepares) and returns the directory the workloads use. */
  setup(ctx: TargetContext): Promise<string>;
  /** Removes whatever setup() made; must be safe to call after a failed or partial setup. */
  teardown(): Promise<void>;
  /**
   * Brings the target back to its state right after setup() (untimed, between two samples), for
   * suites whose workloads change the fixture: the overlays remount on an empty upper layer, the
   * native directory is restored. The directory setup() returned stays the same.
   */
  reset?(): Promise<void>;
  /**
   * The directory behind the one served (the source, or the lower layer), where changes "from
   * outside" are made; set by setup().
   */
  backing?: string;
  /** Daemon-side counters (cumulative since setup), for the raw results and the analysis. */
  snapshot?(): Promise<unknown>;
  /** CPU seconds used so far by the target's daemon, all threads (absent without a daemon). */
  cpuSeconds?(): Promise<number>;
  /** Process id of the target's daemon. */
  pid?(): number | undefined;
  /** How the target really ran (e.g. the transport fusekit negotiated), filled in by setup(). */
  info?: Record<string, unknown>;
}

/** Slug for directory names. */
export function slug(name: string): string {
  return name
    .replace(/[^A-Za-z0-9]+/g, '-')
    .replace(/^-|-$/g, '')
    .toLowerCase();
}

/** Upper and work directories of an overlay target, emptied before every mount. */
class Layers {
  readonly upper: string;
  readonly work: string;
  constructor(id: string) {
    const base = path.join(FIXTURES, 'layers', id);
    this.upper = path.join(base, 'upper');
    this.work = path.join(base, 'work');
  }

  async clear(): Promise<void> {
    // Kernel overlayfs leaves work/work with mode 000; root removes it all the same.
    for (const d of [this.upper, this.work]) {
      await fsp.rm(d, { recursive: true, force: true });
      await fsp.mkdir(d, { recursive: true });
    }
  }

  async remove(): Promise<void> {
    await fsp.rm(path.dirname(this.upper), { recursive: true, force: true });
  }
}

/** Common part: the fixture copy a target serves, and where it mounts. */
abstract class FixtureTarget {
  abstract readonly name: string;
  protected readonly copyName: string | undefined;

  constructor(
    protected readonly fixture: Fixture,
    copy?: string,
  ) {
    this.copyName = copy;
  }

  /** The fixture copy: the target's own unless several targets share one. */
  protected get copy(): string {
    return this.copyName ?? slug(this.name);
  }

  /** Unique per target (shared copies still mount on their own mount point). */
  protected get id(): string {
    return `${this.fixture.name}-${slug(this.name)}`;
  }

  async prepare(cfg: FixtureConfig): Promise<void> {
    await this.fixture.ensure(this.copy, cfg);
  }

  protected async mountpointFor(): Promise<string> {
    const mnt = path.join(FIXTURES, 'mnt', this.id);
    await fsp.mkdir(mnt, { recursive: true });
    await forceUnmount(mnt);
    // Whatever sits in the bare mount point (an interrupted run writing on) would fail the mount.
    for (const e of await fsp.readdir(mnt))
      await fsp.rm(path.join(mnt, e), { recursive: true, force: true });
    return mnt;
  }
}

/** The fixture directory itself, no FUSE: the baseline every ratio is relative to. */
class NativeTarget extends FixtureTarget implements Target {
  backing?: string;
  private dir = '';
  private cfg: FixtureConfig | undefined;

  constructor(
    readonly name: string,
    readonly note: string,
    fixture: Fixture,
    copy?: string,
  ) {
    super(fixture, copy);
  }

  async setup(ctx: TargetContext): Promise<string> {
    this.cfg = ctx;
    this.dir = await this.fixture.ensure(this.copy, ctx);
    await this.fixture.restore(this.dir, ctx);
    this.backing = this.dir;
    return this.dir;
  }

  async reset(): Promise<void> {
    if (this.cfg) await this.fixture.restore(this.dir, this.cfg);
  }

  async teardown(): Promise<void> {}
}

export function nativeTarget(
  fixture: Fixture,
  note = 'the fixture directory on ext4, no FUSE',
): Target {
  return new NativeTarget('native', note, fixture);
}

/** Kernel overlayfs with the fixture copy as its only lower layer. */
class KernelOverlayTarget extends FixtureTarget implements Target {
  readonly name = 'kernel overlayfs';
  backing?: string;
  info?: Record<string, unknown>;
  private mountpoint = '';
  private ctx: TargetContext | undefined;
  private layers: Layers | undefined;

  constructor(
    readonly note: string,
    fixture: Fixture,
    copy?: string,
  ) {
    super(fixture, copy);
  }

  async setup(ctx: TargetContext): Promise<string> {
    this.ctx = ctx;
    const lower = await this.fixture.ensure(this.copy, ctx);
    this.mountpoint = await this.mountpointFor();
    this.layers = new Layers(this.id);
    await this.layers.clear();
    const { upper, work } = this.layers;
    await check('mount', [
      '-t',
      'overlay',
      'overlay',
      '-o',
      `lowerdir=${lower},upperdir=${upper},workdir=${work}`,
      this.mountpoint,
    ]);
    this.backing = lower;
    const line = (await fsp.readFile('/proc/self/mounts', 'utf8'))
      .split('\n')
      .find((l) => l.split(' ')[1] === this.mountpoint);
    this.info = { options: line?.split(' ')[3] };
    return this.mountpoint;
  }

  async reset(): Promise<void> {
    await this.teardown();
    await this.setup(this.ctx!);
  }

  async teardown(): Promise<void> {
    if (!this.mountpoint) return;
    await forceUnmount(this.mountpoint);
    if (!(await isMounted(this.mountpoint))) await this.layers?.remove();
  }
}

/** A daemon process serving a FUSE mount of a source directory or an overlay of it. */
abstract class DaemonTarget extends FixtureTarget implements Target {
  abstract readonly note: string;
  needsUring?: boolean;
  info?: Record<string, unknown>;
  backing?: string;
  protected child: ChildProcess | undefined;
  protected mountpoint = '';
  protected stderr = '';
  private ctx: TargetContext | undefined;
  private layers: Layers | undefined;
  /** RLIMIT_NOFILE the daemon really got (see setup()). */
  nofileGranted: number | undefined;

  /**
   * @param overlay the fixture copy is the lower layer of an overlay (upper and work emptied on
   * every setup) rather than the source of a passthrough mount
   * @param nofile RLIMIT_NOFILE for the daemon (a descriptor per inode needs more than the
   * default), or undefined to inherit the bench's
   */
  constructor(
    fixture: Fixture,
    copy: string | undefined,
    protected readonly overlay: boolean,
    private readonly nofile?: number,
  ) {
    super(fixture, copy);
  }

  protected abstract command(src: string, mnt: string, layers?: Layers): [string, string[]];
  /** Resolves once the mount is usable. */
  protected abstract waitReady(child: ChildProcess): Promise<void>;

  async setup(ctx: TargetContext): Promise<string> {
    this.ctx = ctx;
    const src = await this.fixture.ensure(this.copy, ctx);
    this.mountpoint = await this.mountpointFor();
    if (this.overlay) {
      this.layers = new Layers(this.id);
      await this.layers.clear();
    } else {
      await this.fixture.restore(src, ctx);
    }
    this.backing = src;
    let [cmd, args] = this.command(src, this.mountpoint, this.layers);
    if (this.nofile) {
      // Raising the hard limit needs CAP_SYS_RESOURCE, which a container may not grant: then
      // the daemon gets the hard limit the bench has.
      const hard = await hardNofile();
      const n = (await canRaiseNofile()) ? this.nofile : Math.min(this.nofile, hard);
      this.nofileGranted = n;
      [cmd, args] = ['prlimit', [`--nofile=${n}:${n}`, cmd, ...args]];
    }
    [cmd, args] = pinned(ctx.cpus, cmd, args);
    this.stderr = '';
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    this.child = child;
    child.stderr
      .setEncoding('utf8')
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
    if (this.nofileGranted !== undefined) this.info = { ...this.info, nofile: this.nofileGranted };
    return this.mountpoint;
  }

  async reset(): Promise<void> {
    // Only overlays: a passthrough source changed behind a mount with long caches would leave
    // the kernel with stale entries; their workloads clean up through the mount instead.
    if (!this.overlay) return;
    await this.teardown();
    await this.setup(this.ctx!);
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
    if (this.mountpoint) {
      await forceUnmount(this.mountpoint);
      if (this.layers && !(await isMounted(this.mountpoint))) await this.layers.remove();
    }
  }

  protected stop(child: ChildProcess): void {
    child.kill('SIGTERM');
  }

  pid(): number | undefined {
    return this.child?.pid;
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

  /** For daemons that say nothing when ready: polls for the mount, then for a served request. */
  protected async pollMounted(child: ChildProcess): Promise<void> {
    child.stdout!.resume();
    const deadline = Date.now() + 60_000;
    // Stops with the daemon (setup() then reports why) or after a while: a loop left polling
    // would keep the bench alive after its end.
    while (child.exitCode === null && child.signalCode === null && Date.now() < deadline) {
      if (await isMounted(this.mountpoint)) {
        await fsp.readdir(this.mountpoint);
        this.info = { pid: child.pid };
        return;
      }
      await sleep(20);
    }
    throw new Error(`${this.name}: the mount did not appear`);
  }
}

export interface FusekitTargetOptions {
  /** Serve an overlay with the fixture copy as its lower layer. */
  overlay?: boolean;
  /** Fixture copy shared with other targets (default: the target's own). */
  copy?: string;
  /** RLIMIT_NOFILE for the daemon (clamped to what the bench may grant). */
  nofile?: number;
  /** false: unpinned runs only. */
  pinnable?: boolean;
}

export type FusekitOptions = Omit<MountOptions, 'source' | 'mountpoint' | 'overlay'>;

/** fusekit, in its own Node process (bench/serve.ts). */
class FusekitTarget extends DaemonTarget {
  readonly pinnable: boolean;

  constructor(
    readonly name: string,
    readonly note: string,
    fixture: Fixture,
    private readonly options: FusekitOptions,
    o: FusekitTargetOptions = {},
  ) {
    super(fixture, o.copy, o.overlay ?? false, o.nofile);
    this.pinnable = o.pinnable ?? true;
    this.needsUring = options.transport === 'io_uring';
  }

  protected command(src: string, mnt: string, layers?: Layers): [string, string[]] {
    const opts: MountOptions = layers
      ? { overlay: { lower: [src], upper: layers.upper, work: layers.work }, mountpoint: mnt }
      : { source: src, mountpoint: mnt };
    Object.assign(opts, this.options);
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

export function fusekitTarget(
  name: string,
  note: string,
  fixture: Fixture,
  options: FusekitOptions,
  o: FusekitTargetOptions = {},
): Target {
  return new FusekitTarget(name, note, fixture, options, o);
}

export const PASSTHROUGH_HP = path.join(REPO_DIR, 'deps', 'libfuse', 'bin', 'passthrough_hp');

/** libfuse's example passthrough daemon, the peer to beat. */
class PassthroughHpTarget extends DaemonTarget {
  readonly tools = [{ command: 'fusermount3', pkg: 'fuse3' }];

  constructor(
    readonly name: string,
    readonly note: string,
    fixture: Fixture,
    private readonly args: string[],
  ) {
    super(fixture, undefined, false);
    this.needsUring = args.includes('io_uring');
  }

  protected command(src: string, mnt: string): [string, string[]] {
    return [PASSTHROUGH_HP, ['--foreground', ...this.args, src, mnt]];
  }

  protected waitReady(child: ChildProcess): Promise<void> {
    // passthrough_hp says nothing when ready.
    return this.pollMounted(child);
  }
}

/** fuse-overlayfs (the Debian package), as podman runs it: defaults, in the foreground. */
class FuseOverlayfsTarget extends DaemonTarget {
  readonly name = 'fuse-overlayfs';
  readonly tools = [
    { command: 'fuse-overlayfs', pkg: 'fuse-overlayfs' },
    { command: 'fusermount3', pkg: 'fuse3' },
  ];

  constructor(
    readonly note: string,
    fixture: Fixture,
    nofile?: number,
    copy?: string,
  ) {
    super(fixture, copy, true, nofile);
  }

  protected command(src: string, mnt: string, layers?: Layers): [string, string[]] {
    const { upper, work } = layers!;
    return [
      'fuse-overlayfs',
      ['-f', '-o', `lowerdir=${src},upperdir=${upper},workdir=${work}`, mnt],
    ];
  }

  protected waitReady(child: ChildProcess): Promise<void> {
    return this.pollMounted(child);
  }
}

export function kernelOverlayTarget(note: string, fixture: Fixture, copy?: string): Target {
  return new KernelOverlayTarget(note, fixture, copy);
}

export function fuseOverlayfsTarget(
  note: string,
  fixture: Fixture,
  nofile?: number,
  copy?: string,
): Target {
  return new FuseOverlayfsTarget(note, fixture, nofile, copy);
}

export function passthroughHpTarget(
  name: string,
  note: string,
  fixture: Fixture,
  args: string[],
): Target {
  return new PassthroughHpTarget(name, note, fixture, args);
}

/** The hard RLIMIT_NOFILE of the bench process. */
export async function hardNofile(): Promise<number> {
  const limits = await fsp.readFile('/proc/self/limits', 'utf8');
  const hard = /^Max open files\s+\S+\s+(\S+)/m.exec(limits)?.[1];
  return hard === undefined || hard === 'unlimited' ? Infinity : Number(hard);
}

let raiseNofile: Promise<boolean> | undefined;

/** Whether this process may raise a child's hard RLIMIT_NOFILE (CAP_SYS_RESOURCE), once. */
export function canRaiseNofile(): Promise<boolean> {
  return (raiseNofile ??= hardNofile().then(async (hard) =>
    hard === Infinity
      ? true
      : (await run('prlimit', [`--nofile=${hard + 1}:${hard + 1}`, 'true'])).code === 0,
  ));
}

/** Timeouts of passthrough_hp (it caches names, attributes and misses for 86400 s). */
export const HP_TIMEOUTS = {
  entryTimeout: 86400,
  attrTimeout: 86400,
  negativeTimeout: 86400,
} as const;

/** Checks (and installs with apt-get) what the targets need, once, before anything is mounted. */
export async function checkTargetTools(targets: Target[]): Promise<void> {
  if (targets.some((t) => t instanceof PassthroughHpTarget) && !(await exists(PASSTHROUGH_HP)))
    throw new Error(`${PASSTHROUGH_HP} is missing: run scripts/build-libfuse.sh`);
  const tools = new Map<string, string>();
  for (const t of targets) for (const { command, pkg } of t.tools ?? []) tools.set(command, pkg);
  if (targets.some((t) => t instanceof DaemonTarget)) tools.set('fusermount3', 'fuse3');
  for (const [command, pkg] of tools) {
    if ((await run('sh', ['-c', `command -v ${command}`])).code !== 0)
      await check('apt-get', ['install', '-y', pkg]);
  }
  if (targets.some((t) => t instanceof KernelOverlayTarget)) {
    const fs = await fsp.readFile('/proc/filesystems', 'utf8');
    if (!/\toverlay$/m.test(fs)) await check('modprobe', ['overlay']);
  }
}
