// Workloads: real tools run as child processes against a target's directory. A workload may
// report several metrics (e.g. a cold run and the warm run right after it); each metric says
// whether higher or lower is better so ratios to native can always read "higher is better".
import type { SpawnOptions } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';

import { type FixtureConfig, ROOTFS_TAR } from './fixture';
import { BUILD, check, dropCaches, pinned, type RunResult } from './util';

export interface Metric {
  key: string;
  label: string;
  unit: string;
  /** 'rate': higher is better, ratio = target/native. 'time': lower is better, ratio = native/target. */
  kind: 'rate' | 'time';
  /** Data path (goal: >= 95% of native) or metadata (goal: >= passthrough_hp's best). */
  group: 'data' | 'meta';
  /** Value as stored (bytes/s, ops/s, seconds) to the unit shown. */
  scale: number;
  /** false: no ratio to the baselines makes sense (latency distributions, memory). */
  ratio?: false;
}

export interface WorkloadContext extends FixtureConfig {
  cpus: string | undefined;
  /** The directory behind the one served (source or lower layer), for changes "from outside". */
  backing: string | undefined;
  /** CPU seconds the target's daemon has used so far (0 without a daemon). */
  daemonCpu(): Promise<number>;
  /** The daemon's counters (fusekit: mount.stats()), undefined without. */
  stats(): Promise<unknown>;
  /** The daemon's process id, undefined without a daemon. */
  pid(): number | undefined;
  /** Filled by the workload: metric key -> CPU seconds of the timed part, workload + daemon. */
  cpu: Record<string, number>;
}

export interface Workload {
  name: string;
  metrics: Metric[];
  /** Runs against dir (holding the suite's fixture) and returns metric key -> value. */
  run(dir: string, ctx: WorkloadContext): Promise<Record<string, number>>;
}

export const MiB = 2 ** 20;

/** 10000 -> '10k', for labels. */
export function count(n: number): string {
  if (n >= 1e6 && n % 1e5 === 0) return `${n / 1e6}M`;
  if (n >= 1e3 && n % 100 === 0) return `${n / 1e3}k`;
  return String(n);
}

export function exec(ctx: WorkloadContext, cmd: string, args: string[]): Promise<RunResult> {
  const [c, a] = pinned(ctx.cpus, cmd, args);
  return check(c, a);
}

/**
 * Runs the timed part of metric `key`; fn returns the workload process's own CPU seconds, to
 * which the daemon's CPU time over the same span is added.
 */
export async function timed<T extends { cpu: number }>(
  ctx: WorkloadContext,
  key: string,
  fn: () => Promise<T>,
): Promise<T> {
  const d0 = await ctx.daemonCpu();
  const r = await fn();
  const d1 = await ctx.daemonCpu();
  ctx.cpu[key] = r.cpu + (d1 - d0);
  return r;
}

/**
 * Runs a command (through bench/c/cpuwrap, which reports its CPU time including children) as the
 * timed part of metric `key`; returns its wall time in seconds.
 */
export async function timedCommand(
  ctx: WorkloadContext,
  key: string,
  cmd: string,
  args: string[],
  opts: SpawnOptions = {},
): Promise<{ seconds: number; stdout: string }> {
  return timed(ctx, key, async () => {
    const [c, a] = pinned(ctx.cpus, path.join(BUILD, 'cpuwrap'), [cmd, ...args]);
    const out = await check(c, a, opts);
    const m = /^@cpu (\d+)$/m.exec(out.stderr);
    if (!m) throw new Error(`cpuwrap printed no CPU time: ${out.stderr.slice(-300)}`);
    return { seconds: out.seconds, stdout: out.stdout, cpu: Number(m[1]) / 1e6 };
  });
}

interface FioSide {
  bw_bytes: number;
  iops: number;
  runtime: number;
}

interface FioJob {
  read: FioSide;
  write: FioSide;
  usr_cpu: number;
  sys_cpu: number;
}

/**
 * One fio job with the page cache left as we arranged it: fio's own invalidate (on by default)
 * would make every "warm" run cold, and preallocation would add a FUSE fallocate that plain
 * writers like cp never issue.
 */
async function fio(
  ctx: WorkloadContext,
  args: string[],
  side: 'read' | 'write',
): Promise<FioSide & { cpu: number }> {
  const r = await exec(ctx, 'fio', [
    '--name=bench',
    '--ioengine=psync',
    '--direct=0',
    '--invalidate=0',
    '--fallocate=none',
    '--output-format=json',
    ...args,
  ]);
  // fio may print warnings before the JSON document.
  const json = JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as { jobs: FioJob[] };
  const job = json.jobs[0];
  const s = job?.[side];
  if (!job || !s || !(s.runtime > 0))
    throw new Error(`fio reported no ${side} result: ${r.stdout.slice(0, 500)}`);
  // The I/O thread's CPU time, as fio measures it (the fio process as a whole adds its own
  // setup and bookkeeping, several times the cost of the I/O itself).
  return { ...s, cpu: ((job.usr_cpu + job.sys_cpu) / 100) * (s.runtime / 1000) };
}

export const seqRead: Workload = {
  name: 'seqread',
  metrics: [
    {
      key: 'seqread-cold',
      label: 'seq read cold',
      unit: 'MiB/s',
      kind: 'rate',
      group: 'data',
      scale: 1 / MiB,
    },
    {
      key: 'seqread-warm',
      label: 'seq read warm',
      unit: 'MiB/s',
      kind: 'rate',
      group: 'data',
      scale: 1 / MiB,
    },
  ],
  async run(dir, ctx) {
    const args = [
      '--rw=read',
      '--bs=1M',
      `--size=${ctx.size}`,
      '--readonly',
      `--filename=${path.join(dir, 'read.bin')}`,
    ];
    await dropCaches();
    const cold = await timed(ctx, 'seqread-cold', () => fio(ctx, args, 'read'));
    const warm = await timed(ctx, 'seqread-warm', () => fio(ctx, args, 'read'));
    return { 'seqread-cold': cold.bw_bytes, 'seqread-warm': warm.bw_bytes };
  },
};

export const seqWrite: Workload = {
  name: 'seqwrite',
  metrics: [
    {
      key: 'seqwrite-cold',
      label: 'seq write new file',
      unit: 'MiB/s',
      kind: 'rate',
      group: 'data',
      scale: 1 / MiB,
    },
    {
      key: 'seqwrite-warm',
      label: 'seq overwrite cached',
      unit: 'MiB/s',
      kind: 'rate',
      group: 'data',
      scale: 1 / MiB,
    },
  ],
  async run(dir, ctx) {
    const file = path.join(dir, 'work', 'seq.bin');
    const args = ['--rw=write', '--bs=1M', `--size=${ctx.size}`, `--filename=${file}`];
    await dropCaches();
    try {
      const cold = await timed(ctx, 'seqwrite-cold', () => fio(ctx, args, 'write'));
      const warm = await timed(ctx, 'seqwrite-warm', () => fio(ctx, args, 'write'));
      return { 'seqwrite-cold': cold.bw_bytes, 'seqwrite-warm': warm.bw_bytes };
    } finally {
      // Unlinking drops the dirty pages, so no writeback of this run lands in a later one.
      await fsp.rm(file, { force: true });
    }
  },
};

export const randRead: Workload = {
  name: 'randread',
  metrics: [
    {
      key: 'randread-cold',
      label: '4k rand read cold',
      unit: 'kIOPS',
      kind: 'rate',
      group: 'data',
      scale: 1e-3,
    },
  ],
  async run(dir, ctx) {
    // A fixed amount of I/O (1/16 of the file, same offsets every run: fio's randrepeat) rather
    // than a fixed time, so every target does the same work.
    const ioSize = Math.max(1 * MiB, Math.floor(ctx.size / 16 / 4096) * 4096);
    await dropCaches();
    const args = [
      '--rw=randread',
      '--bs=4k',
      `--size=${ctx.size}`,
      `--io_size=${ioSize}`,
      '--readonly',
      `--filename=${path.join(dir, 'read.bin')}`,
    ];
    const r = await timed(ctx, 'randread-cold', () => fio(ctx, args, 'read'));
    return { 'randread-cold': r.iops };
  },
};

export const metaOps = (files: number): Workload => ({
  name: 'meta',
  metrics: [
    {
      key: 'create',
      label: `create ${count(files)} files`,
      unit: 'ms',
      kind: 'time',
      group: 'meta',
      scale: 1e3,
    },
    {
      key: 'stat-cold',
      label: `stat ${count(files)} cold`,
      unit: 'ms',
      kind: 'time',
      group: 'meta',
      scale: 1e3,
    },
    {
      key: 'unlink',
      label: `unlink ${count(files)}`,
      unit: 'ms',
      kind: 'time',
      group: 'meta',
      scale: 1e3,
    },
  ],
  async run(dir, ctx) {
    const d = path.join(dir, 'work', 'meta');
    await fsp.mkdir(d);
    const phase = async (p: string, key: string): Promise<number> => {
      const r = await timed(ctx, key, async () => {
        const out = await exec(ctx, path.join(BUILD, 'metaops'), [d, String(ctx.files), p]);
        return JSON.parse(out.stdout) as { seconds: number; cpu: number };
      });
      return r.seconds;
    };
    try {
      await dropCaches();
      const create = await phase('create', 'create');
      // The stat after create would be answered from the kernel's caches everywhere; dropping
      // them makes every stat a lookup, the cost of a first `ls -l` or `make`.
      await dropCaches();
      const stat = await phase('stat', 'stat-cold');
      const unlink = await phase('unlink', 'unlink');
      return { create, 'stat-cold': stat, unlink };
    } finally {
      await fsp.rm(d, { recursive: true, force: true });
    }
  },
});

export const walk: Workload = {
  name: 'walk',
  metrics: [
    {
      key: 'walk-cold',
      label: 'readdir+stat walk cold',
      unit: 'ms',
      kind: 'time',
      group: 'meta',
      scale: 1e3,
    },
    {
      key: 'walk-warm',
      label: 'readdir+stat walk warm',
      unit: 'ms',
      kind: 'time',
      group: 'meta',
      scale: 1e3,
    },
  ],
  async run(dir, ctx) {
    const once = async (key: string): Promise<number> => {
      const r = await timed(ctx, key, async () => {
        const out = await exec(ctx, path.join(BUILD, 'walk'), [path.join(dir, 'rootfs')]);
        return JSON.parse(out.stdout) as { seconds: number; cpu: number };
      });
      return r.seconds;
    };
    await dropCaches();
    const cold = await once('walk-cold');
    const warm = await once('walk-warm');
    return { 'walk-cold': cold, 'walk-warm': warm };
  },
};

export const untar: Workload = {
  name: 'untar',
  metrics: [
    { key: 'untar', label: 'untar rootfs', unit: 'ms', kind: 'time', group: 'meta', scale: 1e3 },
  ],
  async run(dir, ctx) {
    const d = path.join(dir, 'work', 'untar');
    await fsp.mkdir(d);
    try {
      // Cold caches: with ext4's inode tables cached, allocating inodes skips (and re-reads)
      // every inode deleted in the last minute, and the previous runs' cleanups deleted thousands,
      // which made even native untar vary tenfold. The tarball itself is then read back into the
      // page cache, so only the extraction is measured.
      await dropCaches();
      await check('cat', [ROOTFS_TAR], { stdio: ['ignore', 'ignore', 'pipe'] });
      const r = await timedCommand(ctx, 'untar', 'tar', ['-C', d, '-xf', ROOTFS_TAR]);
      return { untar: r.seconds };
    } finally {
      await fsp.rm(d, { recursive: true, force: true });
    }
  },
};

/** The passthrough suite's workloads. */
export function passthroughWorkloads(cfg: FixtureConfig): Workload[] {
  return [seqRead, seqWrite, randRead, metaOps(cfg.files), walk, untar];
}

/** Compiles the C helpers into bench/.build when missing or older than their source. */
export async function buildHelpers(): Promise<void> {
  await fsp.mkdir(BUILD, { recursive: true });
  for (const name of ['metaops', 'walk', 'cpuwrap', 'chglat', 'gitstat', 'backmem']) {
    const src = path.join(__dirname, 'c', `${name}.c`);
    const bin = path.join(BUILD, name);
    const [s, h, b] = await Promise.all([
      fsp.stat(src),
      fsp.stat(path.join(__dirname, 'c', 'clock.h')),
      fsp.stat(bin).catch(() => undefined),
    ]);
    if (b && b.mtimeMs >= Math.max(s.mtimeMs, h.mtimeMs)) continue;
    await check('cc', ['-O2', '-Wall', '-Wextra', '-o', bin, src]);
  }
}
