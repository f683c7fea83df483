// `npm run bench`: the suites of suites.ts in one run — passthrough (native vs fusekit vs
// libfuse's passthrough_hp), overlay (kernel overlayfs vs fusekit overlay vs fuse-overlayfs),
// cache (large-tree metadata and change visibility with the watcher) and memory (bytes per cached
// inode). Targets interleaved; the pinnable suites run once unpinned and once with daemons and
// workloads on one CPU. See bench/README.md.
//
// Options (each also an environment variable; an explicit variable wins over --quick):
//   --quick            BENCH_QUICK=1: small sizes, one repetition, no quiet wait (a smoke check)
//   --suite a,b        BENCH_SUITE (all: passthrough,overlay,cache,memory)
//   --filter x,y       BENCH_FILTER (comma-separated substrings of target or workload names)
//   --pin MODE         BENCH_PIN (both | unpinned | pinned)
//   --reps N           BENCH_REPS (3; quick 1)
//   --report FILE      print the Markdown of a saved bench/results/*.json again (no run)
// Environment only: BENCH_SIZE (1G; quick 64M), BENCH_FILES (10000; quick 1000),
// BENCH_TREE_FILES (100000; quick 5000), BENCH_CHANGES (200; quick 40), BENCH_CPU (0),
// BENCH_QUIET (3; quick 0: seconds to wait for other load to pass before each sample, at most 60
// times that over the run), BENCH_FIXTURES (bench/fixtures: where fixtures and targets live).
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { ensureRootfsTar, type FixtureConfig, haveGit } from './fixture';
import { markdown, type Sample, summarize, type Summary } from './report';
import { type Suite, SUITES } from './suites';
import { canRaiseNofile, checkTargetTools, hardNofile, type Target } from './targets';
import {
  BUILD,
  check,
  FIXTURES,
  forceUnmount,
  formatSize,
  liveChildren,
  log,
  mountsUnder,
  parseSize,
  REPO_DIR,
  RESULTS,
  run,
  sleep,
  waitQuiet,
} from './util';
import { buildHelpers, type Metric, type Workload, type WorkloadContext } from './workloads';

const URING_PARAM = '/sys/module/fuse/parameters/enable_uring';
// Free page reporting (virtio-balloon) hands every page the guest frees back to the host, which
// backs it again only when it is next touched. drop_caches frees the page cache before every cold
// sample, so whichever target got reported pages paid those faults in its copies: cold reads of
// one file varied from 600 to 2,400 MiB/s here, with four times the CPU time in _copy_to_iter.
// A block order above the largest (10 on x86-64) pauses reporting.
const PAGE_REPORTING = '/sys/module/page_reporting/parameters/page_reporting_order';
const PAGE_REPORTING_OFF = '11';

interface Pin {
  name: string;
  cpus: string | undefined;
}

/** A suite with the targets and workloads BENCH_FILTER left it. */
interface Plan {
  suite: Suite;
  targets: Target[];
  workloads: Workload[];
  pins: Pin[];
}

interface Config extends FixtureConfig {
  reps: number;
  quiet: number;
  quick: boolean;
  /** Why the tree has not its default size, if so. */
  treeNote: string;
  plans: Plan[];
}

const USAGE = `usage: node --import=tsx bench/run.ts [--quick] [--suite S,...] [--filter F,...]
                                      [--pin both|unpinned|pinned] [--reps N]
       node --import=tsx bench/run.ts --report bench/results/FILE.json   (Markdown again)
(see bench/README.md for the environment variables)`;

/** Command-line options, as the environment variables they stand for. */
function parseArgs(argv: string[]): Record<string, string> {
  const vars: Record<string, string> = {};
  const valued: Record<string, string> = {
    '--suite': 'BENCH_SUITE',
    '--filter': 'BENCH_FILTER',
    '--pin': 'BENCH_PIN',
    '--reps': 'BENCH_REPS',
    '--report': 'BENCH_REPORT',
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const eq = a.indexOf('=');
    const [flag, inline] = eq > 0 ? [a.slice(0, eq), a.slice(eq + 1)] : [a, undefined];
    if (flag === '--quick' && inline === undefined) vars.BENCH_QUICK = '1';
    else if (flag === '--help' || flag === '-h') {
      process.stdout.write(USAGE + '\n');
      process.exit(0);
    } else if (valued[flag]) {
      const v = inline ?? argv[++i];
      if (v === undefined) throw new Error(`${flag} needs a value\n${USAGE}`);
      vars[valued[flag]] = v;
    } else throw new Error(`unknown argument '${a}'\n${USAGE}`);
  }
  return vars;
}

/** Sizes of the quick mode: every workload runs, on small fixtures, once. */
const QUICK: Record<string, string> = {
  BENCH_REPS: '1',
  BENCH_SIZE: '64M',
  BENCH_FILES: '1000',
  BENCH_TREE_FILES: '5000',
  BENCH_CHANGES: '40',
  BENCH_QUIET: '0',
};

function positiveInt(env: NodeJS.ProcessEnv, name: string, def: number): number {
  const v = Number(env[name] ?? def);
  if (!Number.isInteger(v) || v < 1) throw new Error(`${name} must be a positive integer`);
  return v;
}

async function config(args: Record<string, string>): Promise<Config> {
  const quick = (args.BENCH_QUICK ?? process.env.BENCH_QUICK ?? '') === '1';
  // Precedence: command line, then the environment, then the quick mode's sizes.
  const env: NodeJS.ProcessEnv = { ...(quick ? QUICK : {}), ...process.env, ...args };
  const reps = positiveInt(env, 'BENCH_REPS', 3);
  const size = parseSize(env.BENCH_SIZE ?? '1G');
  if (size < 2 ** 20) throw new Error('BENCH_SIZE must be at least 1M');
  const files = positiveInt(env, 'BENCH_FILES', 10000);
  let treeFiles = positiveInt(env, 'BENCH_TREE_FILES', 100000);
  // The daemons that hold a descriptor per inode (fusekit overlay, fileHandles off) need more
  // descriptors than the tree has files; where the hard limit cannot be raised (a container
  // without CAP_SYS_RESOURCE), the default tree shrinks to fit, and an explicit one is warned of.
  let treeNote = '';
  const hard = await hardNofile();
  if (!(await canRaiseNofile()) && treeFiles > hard * 0.8) {
    if (env.BENCH_TREE_FILES === undefined) {
      treeFiles = Math.max(1000, Math.floor((hard * 0.8) / 1000) * 1000);
      treeNote = ` (not 100000: RLIMIT_NOFILE ${hard} cannot be raised)`;
      log(`tree of ${treeFiles} files${treeNote}`);
    } else {
      treeNote = ` (more than RLIMIT_NOFILE ${hard} allows the descriptor-per-inode daemons)`;
      log(`WARNING: BENCH_TREE_FILES=${treeFiles}${treeNote}`);
    }
  }
  const changes = positiveInt(env, 'BENCH_CHANGES', 200);
  if (changes > 10000) throw new Error('BENCH_CHANGES must be at most 10000');
  const quiet = Number(env.BENCH_QUIET ?? 3);
  if (!(quiet >= 0)) throw new Error('BENCH_QUIET must be a number of seconds');
  const cpu = env.BENCH_CPU ?? '0';
  const pinModes = { unpinned: undefined, pinned: cpu };
  const pinSel = env.BENCH_PIN ?? 'both';
  if (!['both', 'unpinned', 'pinned'].includes(pinSel))
    throw new Error('BENCH_PIN must be both, unpinned or pinned');
  const pins: Pin[] = Object.entries(pinModes)
    .filter(([n]) => pinSel === 'both' || pinSel === n)
    .map(([n, cpus]) => ({ name: n === 'pinned' ? `pinned to CPU ${cpu}` : n, cpus }));
  const fx: FixtureConfig = { size, files, treeFiles, changes };

  const names = (env.BENCH_SUITE ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  const unknownSuites = names.filter((n) => !SUITES.some((s) => s.name === n));
  if (unknownSuites.length)
    throw new Error(
      `BENCH_SUITE: unknown ${unknownSuites.join(', ')} (suites: ${SUITES.map((s) => s.name).join(', ')})`,
    );
  const suites = names.length ? SUITES.filter((s) => names.includes(s.name)) : SUITES;

  const terms = (env.BENCH_FILTER ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  const wMatch = (w: Workload, f: string): boolean =>
    w.name.includes(f) || w.metrics.some((m) => m.key.includes(f));
  const plans: Plan[] = [];
  const used = new Set<string>();
  for (const suite of suites) {
    let targets = suite.targets();
    let workloads = await suite.workloads(fx);
    const pinsOf = suite.pinnable
      ? pins
      : [{ name: 'unpinned', cpus: undefined }].filter(() => pinSel !== 'pinned');
    if (terms.length) {
      const isBase = (t: Target): boolean => suite.baselines.includes(t.name);
      const tTerms = terms.filter((f) => targets.some((t) => !isBase(t) && t.name.includes(f)));
      const wTerms = terms.filter((f) => workloads.some((w) => wMatch(w, f)));
      for (const f of terms)
        if (tTerms.includes(f) || wTerms.includes(f) || targets.some((t) => t.name.includes(f)))
          used.add(f);
      // A suite none of the terms is about does not run.
      if (!terms.some((f) => targets.some((t) => t.name.includes(f))) && !wTerms.length) continue;
      // Terms naming targets select targets, terms naming workloads select workloads; the
      // baselines always run because the ratios are relative to them.
      if (tTerms.length)
        targets = targets.filter((t) => isBase(t) || tTerms.some((f) => t.name.includes(f)));
      if (wTerms.length) workloads = workloads.filter((w) => wTerms.some((f) => wMatch(w, f)));
    }
    if (!pinsOf.length) {
      log(`${suite.name}: runs unpinned only, skipped with BENCH_PIN=pinned`);
      continue;
    }
    plans.push({ suite, targets, workloads, pins: pinsOf });
  }
  const unknown = terms.filter((f) => !used.has(f));
  if (unknown.length)
    throw new Error(`BENCH_FILTER: ${unknown.join(', ')} matches no target or workload`);
  if (!plans.length) throw new Error('nothing to run');
  return { reps, quiet, quick, plans, treeNote, ...fx };
}

async function loadavg(): Promise<number> {
  return Number((await fsp.readFile('/proc/loadavg', 'utf8')).split(' ')[0]);
}

type OpStats = Record<string, { count: number; totalNs: number }>;

/** Daemon ops during one sample: op -> [count, mean µs]. */
function opDelta(before: unknown, after: unknown): Record<string, [number, number]> | undefined {
  const a = (before as { ops?: OpStats } | undefined)?.ops;
  const b = (after as { ops?: OpStats } | undefined)?.ops;
  if (!a || !b) return undefined;
  const out: Record<string, [number, number]> = {};
  for (const [op, s] of Object.entries(b)) {
    const n = s.count - (a[op]?.count ?? 0);
    if (n > 0) out[op] = [n, Math.round((s.totalNs - (a[op]?.totalNs ?? 0)) / n / 100) / 10];
  }
  return out;
}

async function snapshot(t: Target): Promise<unknown> {
  if (!t.snapshot) return undefined;
  return Promise.race([t.snapshot(), sleep(5000).then(() => undefined)]);
}

/** Runs a setup step, retrying for a while: the addon may be being rebuilt right now. */
async function retrying<T>(t: Target, what: string, fn: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (e) {
      await t.teardown().catch(() => undefined);
      if (attempt >= 10) throw e;
      log(`${t.name}: ${what} failed (${e instanceof Error ? e.message : String(e)}), retrying`);
      await sleep(10_000);
    }
  }
}

/** Identity of the built addon, to notice a rebuild in the middle of a run. */
async function addonStamp(): Promise<string> {
  const st = await fsp
    .stat(path.join(REPO_DIR, 'build', 'Release', 'fusekit.node'))
    .catch(() => undefined);
  return st ? `${st.size}@${st.mtimeMs}` : 'missing';
}

async function environment(cfg: Config): Promise<Record<string, string>> {
  const cpu =
    (await fsp.readFile('/proc/cpuinfo', 'utf8')).match(/^model name\s*:\s*(.*)$/m)?.[1] ?? '?';
  const head = (await run('git', ['-C', REPO_DIR, 'rev-parse', '--short', 'HEAD'])).stdout.trim();
  const dirty = (
    await run('git', ['-C', REPO_DIR, 'status', '--porcelain', '--', 'native', 'lib'])
  ).stdout.trim();
  // The line naming the tool (fuse-overlayfs prints warnings and its FUSE versions around it).
  const version = async (cmd: string, args: string[]): Promise<string> => {
    const lines = (await run('sh', ['-c', `${cmd} ${args.join(' ')} 2>&1`])).stdout.split('\n');
    return (lines.find((l) => l.startsWith(cmd)) ?? lines[0]!).trim();
  };
  const kinds = new Set(cfg.plans.map((p) => p.suite.name));
  // The filesystem under the fixtures is part of every figure (ext4 without a journal, for one,
  // slows creates after deletes); jbd2 lists the journaled ones.
  const [fsType = '?', fsSource = ''] = (
    await run('findmnt', ['-no', 'FSTYPE,SOURCE', '-T', FIXTURES])
  ).stdout
    .trim()
    .split(/\s+/);
  let fixturesFs = fsType;
  if (fsType === 'ext4' && fsSource) {
    const jbd = await fsp.readdir('/proc/fs/jbd2').catch(() => [] as string[]);
    const dev = path.basename(fsSource);
    fixturesFs += jbd.some((d) => d.startsWith(`${dev}-`))
      ? ' with a journal'
      : ' without a journal';
  }
  return {
    date: new Date().toISOString(),
    kernel: os.release(),
    cpu: `${cpu} × ${os.cpus().length}`,
    memory: `${Math.round(os.totalmem() / 2 ** 30)} GiB`,
    fixtures: `${FIXTURES} on ${fixturesFs}`,
    fusekit: `${head}${dirty ? ' + uncommitted changes in native/ or lib/' : ''}`,
    fio: await version('fio', ['--version']),
    ...(kinds.has('overlay')
      ? { fuseOverlayfs: await version('fuse-overlayfs', ['--version']) }
      : {}),
    ...(kinds.has('cache') && (await haveGit())
      ? { git: await version('git', ['--version']) }
      : {}),
    suites: cfg.plans.map((p) => p.suite.name).join(','),
    size: formatSize(cfg.size),
    reps: String(cfg.reps),
    files: String(cfg.files),
    treeFiles: String(cfg.treeFiles),
    treeNote: cfg.treeNote,
    changes: String(cfg.changes),
    ...(hostMemory ? { hostMemory } : {}),
  };
}

/** What the run did about free page reporting, for the report ('' when there is none). */
let hostMemory = '';

/**
 * Pauses free page reporting (restored at the end, unless BENCH_PAGE_REPORTING=keep). Returns
 * whether it is paused now, and the value to restore if it changed it.
 */
async function pausePageReporting(): Promise<{ paused: boolean; restore?: string }> {
  const cur = (await fsp.readFile(PAGE_REPORTING, 'utf8').catch(() => '')).trim();
  if (!cur) return { paused: false };
  if (process.env.BENCH_PAGE_REPORTING === 'keep') {
    hostMemory = `free page reporting to the host left on (order ${cur})`;
    return { paused: false };
  }
  if (cur === PAGE_REPORTING_OFF) return { paused: true };
  try {
    await fsp.writeFile(PAGE_REPORTING, PAGE_REPORTING_OFF);
    return { paused: true, restore: cur };
  } catch (e) {
    log(`cannot pause free page reporting: ${String(e)}`);
    hostMemory = `free page reporting to the host on (order ${cur}; pausing it failed)`;
    return { paused: false };
  }
}

/** Touches the guest's free memory once, so every page the workloads get is backed by the host. */
async function backGuestMemory(): Promise<void> {
  const t0 = Date.now();
  const out = await check(path.join(BUILD, 'backmem'), ['1024']);
  const secs = (Date.now() - t0) / 1000;
  hostMemory =
    `free page reporting to the host paused for the run, and ${Number(out.stdout.trim()) >> 10} ` +
    `GiB of free guest memory touched once before it (${secs.toFixed(0)} s)`;
  log(hostMemory);
}

/** Shared state of the run, for the interrupt handler and the quiet-wait budget. */
interface RunState {
  active: Set<Target>;
  aborting: boolean;
  quietBudget: number;
  info: Record<string, Record<string, unknown>>;
}

/** Every repetition of one suite; returns its samples. */
async function runPlan(plan: Plan, cfg: Config, st: RunState): Promise<Sample[]> {
  const { suite, targets, workloads } = plan;
  const samples: Sample[] = [];
  for (const pin of plan.pins) {
    for (let rep = 0; rep < cfg.reps; rep++) {
      // Fresh mounts every repetition; the start of the target order rotates so no target
      // always follows the same neighbour.
      const ts = targets.filter((t) => pin.cpus === undefined || t.pinnable !== false);
      const order = ts.map((_, i) => ts[(i + rep) % ts.length]!);
      const dirs = new Map<Target, string>();
      const ctxOf = { ...cfg, cpus: pin.cpus };
      try {
        for (const t of order) {
          if (st.aborting) throw new Error('interrupted');
          st.active.add(t);
          try {
            dirs.set(t, await retrying(t, 'setup', () => t.setup(ctxOf)));
            if (t.info) st.info[`${suite.name}/${pin.name}/${t.name}`] = t.info;
          } catch (e) {
            log(`${t.name}: setup failed: ${e instanceof Error ? e.message : String(e)}`);
            st.active.delete(t);
          }
        }
        // Targets a workload changed: reset before their next sample.
        const dirty = new Set<Target>();
        for (const w of workloads) {
          for (const t of order) {
            // After an interrupt the mounts are gone: writing on would land in the bare mount points.
            if (st.aborting) throw new Error('interrupted');
            const dir = dirs.get(t);
            if (!dir) continue;
            if (dirty.has(t) && t.reset) {
              try {
                await retrying(t, 'reset', () => t.reset!());
                await check('sync', []);
              } catch (e) {
                log(`${t.name}: reset failed: ${e instanceof Error ? e.message : String(e)}`);
                dirs.delete(t);
                st.active.delete(t);
                continue;
              }
            }
            dirty.add(t);
            const ctx: WorkloadContext = {
              ...cfg,
              cpus: pin.cpus,
              backing: t.backing,
              daemonCpu: async () => (t.cpuSeconds ? t.cpuSeconds() : 0),
              stats: () => snapshot(t),
              pid: () => t.pid?.(),
              cpu: {},
            };
            // The wait is capped per sample and per run: on a machine that never gets quiet it
            // would only make the run longer.
            const t0 = Date.now();
            const busy = await waitQuiet(Math.min(cfg.quiet, Math.max(0, st.quietBudget)));
            st.quietBudget -= (Date.now() - t0) / 1000;
            const s: Sample = {
              suite: suite.name,
              pin: pin.name,
              rep,
              target: t.name,
              workload: w.name,
              values: {},
              load: await loadavg(),
              busy,
            };
            const began = Date.now();
            const before = await snapshot(t);
            try {
              s.values = await w.run(dir, ctx);
            } catch (e) {
              s.error = e instanceof Error ? e.message : String(e);
              log(
                `${suite.name} ${pin.name} rep ${rep + 1} ${w.name} on ${t.name} failed: ${s.error}`,
              );
            }
            s.cpu = ctx.cpu;
            s.ops = opDelta(before, await snapshot(t));
            samples.push(s);
            // Metadata of the cleanup is written back now, not during the next sample.
            await check('sync', []);
            s.seconds = (Date.now() - began) / 1000;
            log(
              `${suite.name} ${pin.name} rep ${rep + 1}/${cfg.reps} ${w.name.padEnd(9)} ${t.name.padEnd(24)} ${Object.entries(
                s.values,
              )
                .map(([k, v]) => `${k}=${Math.abs(v) < 100 ? v.toPrecision(4) : v.toFixed(0)}`)
                .join(' ')}`,
            );
          }
        }
      } finally {
        for (const t of order) {
          if (!st.active.has(t)) continue;
          await t.teardown();
          st.active.delete(t);
        }
      }
    }
  }
  return samples;
}

/** Notes of the targets, with what the fusekit mounts really negotiated. */
function notesOf(plan: Plan, st: RunState): Record<string, string> {
  const notes: Record<string, string> = {};
  for (const t of plan.targets) {
    const ran = new Set<string>();
    for (const [k, v] of Object.entries(st.info)) {
      if (!k.startsWith(`${plan.suite.name}/`) || !k.endsWith(`/${t.name}`)) continue;
      const parts: string[] = [];
      if (typeof v.transport === 'string')
        parts.push(`${v.transport}, passthrough ${v.passthrough ? 'on' : 'off'}`);
      else if (typeof v.options === 'string') parts.push(v.options);
      if (typeof v.nofile === 'number') parts.push(`RLIMIT_NOFILE ${v.nofile}`);
      if (parts.length) ran.add(parts.join(', '));
    }
    notes[t.name] = t.note + (ran.size ? ` — ran with: ${[...ran].join('; ')}` : '');
  }
  return notes;
}

/** Everything a run measured: bench/results/<date>.json, and what render() turns into Markdown. */
interface ResultDoc {
  environment: Record<string, string>;
  run: {
    minutes: number;
    quick: boolean;
    /** BENCH_QUIET, and the seconds spent waiting for quiet in all. */
    quiet: number;
    quietUsed: number;
    /** The addon was rebuilt while the run went on. */
    addonChanged: boolean;
    /** Every selected suite ran (false in the files written after each suite). */
    complete: boolean;
  };
  suites: {
    name: string;
    baselines: string[];
    pins: string[];
    targets: string[];
    /** Target -> note, with what the fusekit mounts negotiated. */
    notes: Record<string, string>;
    metrics: Metric[];
    summary: Summary;
  }[];
  info: Record<string, Record<string, unknown>>;
  samples: Sample[];
}

/** The Markdown report of a run (also for `--report FILE.json`, re-rendering saved results). */
function render(doc: ResultDoc): string {
  const env = doc.environment;
  const samples = doc.samples;
  const loads = samples.map((s) => s.load);
  const busy = samples.map((s) => s.busy).sort((a, b) => a - b);
  const busyMedian = busy[Math.floor(busy.length / 2)] ?? 0;
  const noisy = busy.filter((b) => b >= 0.15).length;
  const ran = doc.suites.map((s) => s.name);
  return [
    `## Benchmark ${env.date!.slice(0, 16).replace('T', ' ')} UTC`,
    '',
    `${env.kernel}, ${env.cpu}, ${env.memory}; fixtures ${env.fixtures ?? '?'}; ` +
      `fusekit ${env.fusekit}; ${env.fio}` +
      `${env.fuseOverlayfs ? `; ${env.fuseOverlayfs}` : ''}${env.git ? `; ${env.git}` : ''}. ` +
      `Suites ${env.suites}; data file ${env.size}, ${env.files} small files, a tree of ` +
      `${env.treeFiles} files${env.treeNote ?? ''}, ${env.changes} changes; median of ${env.reps} interleaved ` +
      `repetitions (${doc.run.minutes.toFixed(1)} min). Other load on the machine: 1-min load ` +
      `average ${Math.min(...loads).toFixed(1)}–${Math.max(...loads).toFixed(1)}; CPU busy just ` +
      `before a sample (bench idle) median ${(busyMedian * 100).toFixed(0)}%, ${noisy} of ` +
      `${busy.length} samples started above 15% after waiting up to ${doc.run.quiet} s ` +
      `(${doc.run.quietUsed} s in all).${env.hostMemory ? ` VM: ${env.hostMemory}.` : ''}`,
    '',
    ...(doc.run.complete
      ? []
      : [`**Incomplete: only ${ran.join(', ') || 'no suite'} ran to the end.**`, '']),
    ...(doc.run.addonChanged
      ? ['**Warning: the fusekit addon was rebuilt during this run; its figures mix builds.**', '']
      : []),
    ...(doc.run.quick
      ? [
          '**Quick mode (small sizes, one repetition): a check that everything runs; the ' +
            'figures are not comparable with a full run and the goals below say nothing.**',
          '',
        ]
      : []),
    '"~" marks a spread (max−min over the repetitions) above 20% of the median.',
    '',
    ...doc.suites.flatMap((r) => {
      const suite = SUITES.find((x) => x.name === r.name);
      return [
        `## ${suite?.title ?? r.name}`,
        '',
        ...(suite ? [suite.intro, ''] : []),
        markdown(r.summary, r.pins, r.targets, r.metrics, r.notes, {
          baselines: r.baselines,
          goals: suite?.goals,
        }),
        '',
      ];
    }),
  ].join('\n');
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  if (args.BENCH_REPORT) {
    const doc = JSON.parse(await fsp.readFile(args.BENCH_REPORT, 'utf8')) as ResultDoc;
    if (!doc.run || !Array.isArray(doc.suites))
      throw new Error(`${args.BENCH_REPORT}: not a result file of this version`);
    process.stdout.write(render(doc));
    return;
  }
  const cfg = await config(args);
  if (process.getuid?.() !== 0)
    throw new Error('the bench needs root (drop_caches, passthrough, mounts)');
  const started = Date.now();
  const st: RunState = {
    active: new Set(),
    aborting: false,
    quietBudget: 60 * cfg.quiet,
    info: {},
  };
  let uringRestore: string | undefined;
  let reportingRestore: string | undefined;
  let cleaning: Promise<void> | undefined;

  const cleanup = (): Promise<void> =>
    (cleaning ??= (async () => {
      for (const c of liveChildren) c.kill('SIGTERM');
      for (const t of st.active)
        await t.teardown().catch((e: unknown) => log(`${t.name}: teardown: ${String(e)}`));
      st.active.clear();
      for (const mp of await mountsUnder(path.join(FIXTURES, 'mnt'))) {
        log(`removing leftover mount ${mp}`);
        await forceUnmount(mp);
      }
      if (uringRestore !== undefined) {
        await fsp
          .writeFile(URING_PARAM, uringRestore)
          .catch((e: unknown) => log(`cannot restore ${URING_PARAM}: ${String(e)}`));
        uringRestore = undefined;
      }
      if (reportingRestore !== undefined) {
        await fsp
          .writeFile(PAGE_REPORTING, reportingRestore)
          .catch((e: unknown) => log(`cannot restore ${PAGE_REPORTING}: ${String(e)}`));
        reportingRestore = undefined;
      }
    })());
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      log(`${sig}: cleaning up`);
      st.aborting = true;
      void cleanup().finally(() => process.exit(130));
    });
  }

  try {
    // Leftovers of a killed earlier run would fail the mounts.
    for (const mp of await mountsUnder(path.join(FIXTURES, 'mnt'))) await forceUnmount(mp);
    if ((await run('sh', ['-c', 'command -v fio'])).code !== 0)
      await check('apt-get', ['install', '-y', 'fio']);
    await buildHelpers();
    const allTargets = cfg.plans.flatMap((p) => p.targets);
    await checkTargetTools(allTargets);
    await ensureRootfsTar();

    if (allTargets.some((t) => t.needsUring)) {
      const cur = (await fsp.readFile(URING_PARAM, 'utf8').catch(() => '')).trim();
      if (cur === 'N') {
        try {
          await fsp.writeFile(URING_PARAM, 'Y');
          uringRestore = cur;
          log('enabled FUSE-over-io_uring for this run (restored at the end)');
        } catch (e) {
          log(`cannot enable FUSE-over-io_uring: ${String(e)}`);
        }
      }
      if (cur !== 'Y' && uringRestore === undefined) {
        log('FUSE-over-io_uring is unavailable: skipping the io_uring targets');
        for (const p of cfg.plans) p.targets = p.targets.filter((t) => !t.needsUring);
      }
    }
    // All fixtures exist before anything is timed.
    for (const p of cfg.plans) for (const t of p.targets) await t.prepare(cfg);
    // The restore value is kept before anything else can fail, so cleanup always restores it.
    const reporting = await pausePageReporting();
    reportingRestore = reporting.restore;
    if (reporting.paused) await backGuestMemory();

    const env = await environment(cfg);
    for (const p of cfg.plans)
      log(
        `${p.suite.name}: targets ${p.targets.map((t) => t.name).join(', ')}; workloads ${p.workloads.map((w) => w.name).join(', ')}`,
      );
    log(`size ${env.size}, ${cfg.files} files, tree ${cfg.treeFiles} files, ${cfg.reps} reps`);

    const stamp0 = await addonStamp();
    const samples: Sample[] = [];
    const doc: ResultDoc = {
      environment: env,
      run: {
        minutes: 0,
        quick: cfg.quick,
        quiet: cfg.quiet,
        quietUsed: 0,
        addonChanged: false,
        complete: false,
      },
      suites: [],
      info: st.info,
      samples,
    };
    const stamp = env.date!.slice(0, 19).replace(/:/g, '-') + (cfg.quick ? '-quick' : '');
    // Written after every suite, so a failure later keeps what was measured.
    const save = async (): Promise<string> => {
      doc.run.minutes = (Date.now() - started) / 60000;
      doc.run.quietUsed = Math.round(60 * cfg.quiet - st.quietBudget);
      doc.run.addonChanged = (await addonStamp()) !== stamp0;
      const md = render(doc);
      await fsp.mkdir(RESULTS, { recursive: true });
      await fsp.writeFile(path.join(RESULTS, `${stamp}.md`), md);
      await fsp.writeFile(path.join(RESULTS, `${stamp}.json`), JSON.stringify(doc, null, 1));
      return md;
    };
    for (const p of cfg.plans) {
      const got = await runPlan(p, cfg, st);
      samples.push(...got);
      doc.suites.push({
        name: p.suite.name,
        baselines: p.suite.baselines,
        pins: p.pins.map((x) => x.name),
        targets: p.targets.map((t) => t.name),
        notes: notesOf(p, st),
        metrics: p.workloads.flatMap((w) => w.metrics),
        summary: summarize(
          got,
          (w) => p.workloads.find((x) => x.name === w)?.metrics.map((m) => m.key) ?? [],
        ),
      });
      doc.run.complete = doc.suites.length === cfg.plans.length;
      await save();
      log(`${p.suite.name} done: bench/results/${stamp}.md and .json`);
    }
    const md = await save();
    if (doc.run.addonChanged) log('WARNING: build/Release/fusekit.node changed during the run');
    process.stdout.write(md);
    log(`results: bench/results/${stamp}.md and .json (${doc.run.minutes.toFixed(1)} min)`);
  } finally {
    await cleanup();
    const left = await mountsUnder(path.join(FIXTURES, 'mnt'));
    if (left.length) log(`WARNING: mounts left behind: ${left.join(', ')}`);
  }
}

// Exits explicitly: a handle some failed step left open must not keep the bench alive.
main().then(
  () => process.exit(process.exitCode ?? 0),
  (e: unknown) => {
    log(`failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
    process.exit(1);
  },
);
