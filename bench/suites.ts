// The suites of one `npm run bench`: each compares its own targets on its own fixture with its
// own workloads, baselines and goals. BENCH_SUITE picks suites; BENCH_FILTER then picks targets
// and workloads within them (see run.ts).
import { type FixtureConfig, haveGit, lowerFixture, sourceFixture, treeFixture } from './fixture';
import { checkGoals, factorTable, type GoalsFn, passthroughGoals } from './report';
import {
  fuseOverlayfsTarget,
  fusekitTarget,
  HP_TIMEOUTS,
  kernelOverlayTarget,
  nativeTarget,
  passthroughHpTarget,
  type Target,
} from './targets';
import { changeLatency, gitStatus, treeWalk } from './workloads-cache';
import { inodeMemory } from './workloads-memory';
import { chmodLower, copyUp, rmLower } from './workloads-overlay';
import {
  metaOps,
  passthroughWorkloads,
  seqRead,
  seqWrite,
  untar,
  walk,
  type Metric,
  type Workload,
} from './workloads';

export interface Suite {
  /** Name in BENCH_SUITE, the results and the logs. */
  readonly name: string;
  /** Heading of the suite's section. */
  readonly title: string;
  /** What the section compares and how to read its cells (Markdown). */
  readonly intro: string;
  /**
   * Targets the ratios are relative to, in order (each cell shows a ratio per baseline). They
   * always run, whatever BENCH_FILTER says.
   */
  readonly baselines: string[];
  /** Whether the suite also runs pinned to one CPU (BENCH_PIN); otherwise unpinned only. */
  readonly pinnable: boolean;
  targets(): Target[];
  workloads(cfg: FixtureConfig): Promise<Workload[]>;
  goals?: GoalsFn;
}

/**
 * Descriptors for the daemons that hold one per inode (fusekit overlay, fusekit file-handle mode
 * off): more than the tree has inodes. fuse-overlayfs gets the same for fairness.
 */
const NOFILE = 1 << 20;

const passthrough: Suite = {
  name: 'passthrough',
  title: 'Passthrough: native vs fusekit vs passthrough_hp',
  intro:
    'Cells: median value (speed relative to native: throughput target÷native, times ' +
    'native÷target — higher is better either way). The fusekit head-to-head targets use ' +
    "passthrough_hp's caching: entry, attribute and negative timeouts of 86400 s.",
  baselines: ['native'],
  pinnable: true,
  targets() {
    const fx = sourceFixture;
    const fk = (pt: 'on' | 'off', transport: 'dev' | 'io_uring'): Target =>
      fusekitTarget(
        `fusekit pt=${pt} ${transport}`,
        `passthrough ${pt}, transport ${transport}, 86400 s caches`,
        fx,
        { passthrough: pt, transport, ...HP_TIMEOUTS },
      );
    return [
      nativeTarget(fx, 'the source directory on ext4, no FUSE'),
      fk('on', 'dev'),
      fk('on', 'io_uring'),
      fk('off', 'dev'),
      fk('off', 'io_uring'),
      fusekitTarget(
        'fusekit defaults',
        'no options: passthrough auto, transport auto, 1 s entry/attr caches, no negative ' +
          'cache (unpinned runs only)',
        fx,
        {},
        { pinnable: false },
      ),
      passthroughHpTarget(
        'passthrough_hp',
        'default: passthrough, /dev/fuse, 86400 s caches',
        fx,
        [],
      ),
      passthroughHpTarget(
        'passthrough_hp nopt',
        '--nopassthrough (it then enables the writeback cache)',
        fx,
        ['--nopassthrough'],
      ),
      passthroughHpTarget('passthrough_hp io_uring', '-o io_uring, passthrough', fx, [
        '-o',
        'io_uring',
      ]),
    ];
  },
  workloads: (cfg) => Promise.resolve(passthroughWorkloads(cfg)),
  goals: passthroughGoals,
};

const overlay: Suite = {
  name: 'overlay',
  title: 'Overlay: native vs kernel overlayfs vs fusekit overlay vs fuse-overlayfs',
  intro:
    'One lower layer (a Debian rootfs, the large data file, small files), the same directory ' +
    'for every overlay, and an empty upper layer, fresh for every sample. Cells: median value (speed relative to native / relative to ' +
    'kernel overlayfs; higher is better, 1.00 is as fast). Native is the lower directory itself, ' +
    'so copy-up and chmod are nearly free there: their ratios to native show what the overlay ' +
    'costs, the ratios to kernel overlayfs how well that is done.',
  baselines: ['native', 'kernel overlayfs'],
  // Unpinned only: the issue asks for no pinned overlay figures, and they would add ~15 min.
  pinnable: false,
  targets() {
    const fx = lowerFixture;
    // The overlays never change their lower layer, so they share one: copies of the same files
    // sit at different places of the disk, and reading one 1 GiB copy took ~100 ms longer than
    // another here, whichever overlay read it. Native changes its directory, so it has its own.
    const shared = 'overlays';
    return [
      nativeTarget(fx, 'the lower directory itself on ext4, no overlay (restored after samples)'),
      kernelOverlayTarget(
        'kernel overlayfs, lowerdir=fixture, upperdir/workdir on the same ext4, module defaults',
        fx,
        shared,
      ),
      fusekitTarget(
        'fusekit overlay',
        'overlay: { lower, upper, work }, passthrough and transport auto, 86400 s caches (like ' +
          "fuse-overlayfs's, which never expire)",
        fx,
        { ...HP_TIMEOUTS },
        { overlay: true, nofile: NOFILE, copy: shared },
      ),
      fusekitTarget(
        'fusekit overlay watch',
        'the same with cache: { watch: true } (3600 s caches kept true by the layer watcher; ' +
          'merged directory listings cached by the kernel too)',
        fx,
        { cache: { watch: true } },
        { overlay: true, nofile: NOFILE, copy: shared },
      ),
      fuseOverlayfsTarget(
        'fuse-overlayfs (Debian package) with its defaults, as podman runs it: caches that ' +
          'never expire (timeout 1e9 s), fsync at copy-up, /dev/fuse, no passthrough',
        fx,
        NOFILE,
        shared,
      ),
    ];
  },
  workloads: (cfg) =>
    Promise.resolve([
      seqRead,
      seqWrite,
      walk,
      metaOps(cfg.files),
      untar,
      chmodLower(cfg.files),
      rmLower,
      copyUp(cfg.size),
    ]),
  goals(summary, pin, ts, metrics) {
    const ko = 'kernel overlayfs';
    const fk = ts.filter((t) => t.startsWith('fusekit'));
    const meta = (m: Metric): boolean => m.group === 'meta';
    return [
      ...factorTable({
        summary,
        pin,
        ts,
        metrics,
        reference: ko,
        columns: [...fk, 'fuse-overlayfs', 'native'],
        mark: meta,
        marked: 'metadata-heavy',
        title: 'Overlay',
      }),
      ...checkGoals(summary, pin, ts, metrics, [
        {
          title: 'metadata-heavy within 1.5× of kernel overlayfs (speed ≥ 0.67)',
          candidates: fk,
          against: [ko],
          applies: meta,
          min: 1 / 1.5,
        },
        {
          title: 'data path ≥ 0.95 of kernel overlayfs',
          candidates: fk,
          against: [ko],
          applies: (m) => m.group === 'data',
          min: 0.95,
        },
        {
          title: 'ahead of fuse-overlayfs everywhere (speed > 1.00)',
          candidates: fk,
          against: ['fuse-overlayfs'],
          applies: () => true,
          min: 1,
          strict: true,
        },
      ]),
    ];
  },
};

const cache: Suite = {
  name: 'cache',
  title: 'Cache: metadata of a large tree, and how fast changes behind the mount show',
  intro:
    'A large tree (a git repository when git is installed), read through each target. Cells: ' +
    'median value (speed relative to native / relative to kernel overlayfs). The change ' +
    'latency rows have no ratios: a change made on the backing directory (source or lower ' +
    'layer) is visible at once natively and through kernel overlayfs (it reads the lower ' +
    'inode), and through fusekit when the watcher has invalidated the cached attributes (or, ' +
    'without a watcher, when the 1 s attribute timeout ends).',
  baselines: ['native', 'kernel overlayfs'],
  pinnable: false,
  targets() {
    const fx = treeFixture;
    return [
      nativeTarget(fx, 'the tree on ext4, no FUSE'),
      kernelOverlayTarget('kernel overlayfs with the tree as its lower layer, empty upper', fx),
      fusekitTarget(
        'fusekit watch',
        'passthrough, cache: { watch: true } (3600 s caches kept true by the watcher), ' +
          'passthrough and transport auto',
        fx,
        { cache: { watch: true } },
      ),
      fusekitTarget(
        'fusekit nowatch',
        'passthrough, no options: 1 s entry/attr caches, no negative cache, no watcher',
        fx,
        {},
      ),
      fusekitTarget(
        'fusekit overlay watch',
        'overlay with the tree as its lower layer, cache: { watch: true }',
        fx,
        { cache: { watch: true } },
        { overlay: true, nofile: NOFILE },
      ),
    ];
  },
  async workloads(cfg) {
    return [
      treeWalk(cfg.treeFiles),
      gitStatus(cfg.treeFiles, await haveGit()),
      changeLatency(cfg.changes),
    ];
  },
  goals(summary, pin, ts, metrics) {
    const fk = ts.filter((t) => t.startsWith('fusekit'));
    const warm = (m: Metric): boolean => m.key.endsWith('-warm');
    return [
      ...factorTable({
        summary,
        pin,
        ts,
        metrics,
        reference: 'native',
        columns: [...fk, 'kernel overlayfs'],
        mark: warm,
        marked: 'warm metadata',
        title: 'Cache',
      }),
      ...checkGoals(summary, pin, ts, metrics, [
        {
          title: 'warm metadata within 1.1× of native with the watcher (speed ≥ 0.91)',
          candidates: fk.filter((t) => t.includes('watch') && !t.includes('nowatch')),
          against: ['native'],
          applies: warm,
          min: 1 / 1.1,
        },
      ]),
    ];
  },
};

const memory: Suite = {
  name: 'memory',
  title: 'Memory per cached inode',
  intro:
    'A walk of the tree through a mount with 86400 s caches, so the kernel keeps every inode ' +
    "and the daemon too; figures from the daemon's mount.stats() and its process. RSS growth " +
    'is the measured cost (malloc arenas included), the estimate what fusekit reports; the ' +
    'kernel figure is the growth of the open-file slab over the whole machine (descriptors ' +
    'the daemon holds; other processes move it too). The file-handle mode keeps at most ' +
    'RLIMIT_NOFILE less a reserve (an eighth, or 8192 or half where that is more) ' +
    "descriptors (here under the bench's own limit); the descriptor modes " +
    `ask for RLIMIT_NOFILE ${NOFILE} (the notes say what they got).`,
  baselines: [],
  pinnable: false,
  targets() {
    const fx = treeFixture;
    const opts = { copy: 'memory' };
    return [
      fusekitTarget(
        'fusekit handles',
        'passthrough, fileHandles: on (kernel file handles, a bounded cache of descriptors)',
        fx,
        { fileHandles: 'on', ...HP_TIMEOUTS },
        opts,
      ),
      fusekitTarget(
        'fusekit fds',
        'passthrough, fileHandles: off (one O_PATH descriptor per inode)',
        fx,
        { fileHandles: 'off', ...HP_TIMEOUTS },
        { ...opts, nofile: NOFILE },
      ),
      fusekitTarget(
        'fusekit overlay',
        'overlay with the tree as its lower layer (fileHandles auto: handles, a bounded cache of descriptors)',
        fx,
        { ...HP_TIMEOUTS },
        { ...opts, overlay: true, nofile: NOFILE },
      ),
    ];
  },
  workloads: (cfg) => Promise.resolve([inodeMemory(cfg.treeFiles)]),
};

/** Every suite, in run order. */
export const SUITES: Suite[] = [passthrough, overlay, cache, memory];
