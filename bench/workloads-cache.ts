// Cache suite workloads, on a directory holding tree/ (a large tree; a git repository when git
// is installed), tree.list and chg/ (fixture.ts, treeFixture): metadata cold and warm, and how
// long a change made behind the mount takes to show through it.
import * as path from 'node:path';

import { GIT_CONFIG, gitEnv } from './fixture';
import { BUILD, dropCaches } from './util';
import { count, exec, type Metric, timed, timedCommand, type Workload } from './workloads';

const ms = (key: string, label: string, extra: Partial<Metric> = {}): Metric => ({
  key,
  label,
  unit: 'ms',
  kind: 'time',
  group: 'meta',
  scale: 1e3,
  ...extra,
});

/** readdir + stat of the whole tree, after drop_caches and then again. */
export const treeWalk = (files: number): Workload => ({
  name: 'treewalk',
  metrics: [
    ms('tree-walk-cold', `walk ${count(files)}-file tree cold`),
    ms('tree-walk-warm', `walk ${count(files)}-file tree warm`),
  ],
  async run(dir, ctx) {
    const once = async (key: string): Promise<number> => {
      const r = await timed(ctx, key, async () => {
        const out = await exec(ctx, path.join(BUILD, 'walk'), [path.join(dir, 'tree')]);
        return JSON.parse(out.stdout) as { seconds: number; cpu: number };
      });
      return r.seconds;
    };
    await dropCaches();
    const cold = await once('tree-walk-cold');
    const warm = await once('tree-walk-warm');
    return { 'tree-walk-cold': cold, 'tree-walk-warm': warm };
  },
});

/**
 * `git status` of the tree (clean: every tracked file lstat'ed, every directory read), after
 * drop_caches and then again. --no-optional-locks keeps git from rewriting the index, as editors
 * run it. Without git, bench/c/gitstat.c makes the same calls.
 */
export const gitStatus = (files: number, git: boolean): Workload => {
  const what = git ? 'git status' : 'git status (emulated)';
  return {
    name: 'gitstatus',
    metrics: [
      ms('git-status-cold', `${what}, ${count(files)} files, cold`),
      ms('git-status-warm', `${what}, ${count(files)} files, warm`),
    ],
    async run(dir, ctx) {
      const tree = path.join(dir, 'tree');
      const once = async (key: string): Promise<number> => {
        if (!git) {
          const r = await timed(ctx, key, async () => {
            const list = path.join(dir, 'tree.list');
            const out = await exec(ctx, path.join(BUILD, 'gitstat'), [tree, list]);
            return JSON.parse(out.stdout) as { seconds: number; cpu: number };
          });
          return r.seconds;
        }
        const args = ['-C', tree, '--no-optional-locks', ...GIT_CONFIG, 'status', '--porcelain'];
        const r = await timedCommand(ctx, key, 'git', args, { env: gitEnv() });
        if (r.stdout.trim())
          throw new Error(`git status is not clean: ${r.stdout.trim().slice(0, 300)}`);
        return r.seconds;
      };
      await dropCaches();
      const cold = await once('git-status-cold');
      const warm = await once('git-status-warm');
      return { 'git-status-cold': cold, 'git-status-warm': warm };
    },
  };
};

/** Nearest-rank percentile of sorted values. */
function percentile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
}

/**
 * Change visibility: bench/c/chglat.c changes files on the backing directory (mode or size) and
 * stats them through the mount in a tight loop until the change shows; the distribution of those
 * delays over up to `changes` changes (at most chgBudget(changes) seconds, each given CHG_TIMEOUT).
 */
export const CHG_TIMEOUT = 5;
/** Seconds one sample may spend: 0.15 s a change, at most 30 s (200 changes with no watcher). */
export const chgBudget = (changes: number): number => Math.min(30, Math.max(3, changes * 0.15));
export const changeLatency = (changes: number): Workload => {
  const lat = (key: string, label: string): Metric => ms(key, label, { ratio: false });
  return {
    name: 'chglat',
    metrics: [
      lat('chg-p50', 'change visible, p50'),
      lat('chg-p90', 'change visible, p90'),
      lat('chg-p99', 'change visible, p99'),
      lat('chg-max', 'change visible, max'),
      {
        key: 'chg-n',
        label: `changes measured (of ${changes})`,
        unit: 'count',
        kind: 'rate',
        group: 'meta',
        scale: 1,
        ratio: false,
      },
      {
        key: 'chg-unseen',
        label: `changes not visible within ${CHG_TIMEOUT} s`,
        unit: 'count',
        kind: 'time',
        group: 'meta',
        scale: 1,
        ratio: false,
      },
    ],
    async run(dir, ctx) {
      if (!ctx.backing) throw new Error('the target has no backing directory');
      const out = await exec(ctx, path.join(BUILD, 'chglat'), [
        ctx.backing,
        dir,
        String(changes),
        String(chgBudget(changes)),
        String(CHG_TIMEOUT),
      ]);
      const r = JSON.parse(out.stdout) as { latencies: number[]; unseen: number };
      const s = [...r.latencies].sort((a, b) => a - b);
      if (!s.length) throw new Error(`no change became visible (${r.unseen} unseen)`);
      return {
        'chg-p50': percentile(s, 0.5),
        'chg-p90': percentile(s, 0.9),
        'chg-p99': percentile(s, 0.99),
        'chg-max': s[s.length - 1]!,
        'chg-n': s.length + r.unseen,
        'chg-unseen': r.unseen,
      };
    },
  };
};
