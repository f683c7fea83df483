// Memory suite: what each inode the daemon knows costs. A walk of the tree through a mount with
// long caches makes the kernel hold every inode, so the daemon does too; the daemon's counters
// (mount.stats(): inodes, inodeMemory, inodeFds) and its process's anonymous RSS are read before
// and after.
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';

import type { MountStats } from '../lib';
import { BUILD, dropCaches, sleep } from './util';
import { count, exec, type Metric, type Workload } from './workloads';

async function rssAnon(pid: number): Promise<number> {
  const status = await fsp.readFile(`/proc/${pid}/status`, 'utf8');
  const kb = /^RssAnon:\s+(\d+) kB$/m.exec(status)?.[1];
  if (kb === undefined) throw new Error(`no RssAnon in /proc/${pid}/status`);
  return Number(kb) * 1024;
}

/** Bytes of open-file objects in the kernel (one per descriptor, O_PATH ones included). */
async function filpBytes(): Promise<number> {
  const info = await fsp.readFile('/proc/slabinfo', 'utf8').catch(() => '');
  const f = /^filp\s+(\d+)\s+\d+\s+(\d+)/m.exec(info);
  return f ? Number(f[1]) * Number(f[2]) : NaN;
}

const metric = (key: string, label: string, unit: string, scale = 1): Metric => ({
  key,
  label,
  unit,
  kind: 'time',
  group: 'meta',
  scale,
  ratio: false,
});

export const inodeMemory = (files: number): Workload => ({
  name: 'memory',
  metrics: [
    metric('mem-inodes', `inodes held after walking ${count(files)} files`, 'inodes'),
    metric('mem-rss', 'daemon RSS (anonymous) growth per inode', 'bytes'),
    metric('mem-est', "stats().inodeMemory per inode (fusekit's estimate)", 'bytes'),
    metric('mem-filp', 'kernel open-file objects growth per inode', 'bytes'),
    metric('mem-fds', 'descriptors held for inodes (stats().inodeFds.open)', 'fds'),
    metric('mem-left', 'inodes left after drop_caches (forgotten)', 'inodes'),
    metric('mem-walk', 'the walk, cold', 'ms', 1e3),
  ],
  async run(dir, ctx) {
    const pid = ctx.pid();
    const stats = async (): Promise<MountStats> => {
      const s = (await ctx.stats()) as MountStats | undefined;
      if (!s || pid === undefined) throw new Error('the memory workload needs a fusekit daemon');
      return s;
    };
    // A fresh start: the kernel forgets what earlier samples looked up.
    await dropCaches();
    await sleep(500);
    const s0 = await stats();
    const rss0 = await rssAnon(pid!);
    const filp0 = await filpBytes();
    const out = await exec(ctx, path.join(BUILD, 'walk'), [path.join(dir, 'tree')]);
    const walk = JSON.parse(out.stdout) as { seconds: number };
    await sleep(500);
    const s1 = await stats();
    const rss1 = await rssAnon(pid!);
    const filp1 = await filpBytes();
    const n = s1.inodes - s0.inodes;
    if (!(n > 0)) throw new Error(`the daemon holds no more inodes after the walk (${s1.inodes})`);
    // Forgetting: after drop_caches the kernel sends FORGET for everything it dropped.
    await dropCaches();
    let left = (await stats()).inodes;
    for (let i = 0; i < 50; i++) {
      await sleep(200);
      const now = (await stats()).inodes;
      if (now === left) break;
      left = now;
    }
    const values: Record<string, number> = {
      'mem-inodes': s1.inodes,
      'mem-rss': (rss1 - rss0) / n,
      'mem-est': s1.inodeMemory / s1.inodes,
      'mem-filp': (filp1 - filp0) / n,
      'mem-fds': s1.inodeFds.open,
      'mem-left': left,
      'mem-walk': walk.seconds,
    };
    // /proc/slabinfo may be unreadable (or merged away): leave that figure out.
    return Object.fromEntries(Object.entries(values).filter(([, v]) => Number.isFinite(v)));
  },
});
