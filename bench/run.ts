// `npm run bench`: native vs fusekit vs libfuse's passthrough_hp, targets interleaved, run once
// unpinned and once with daemons and workloads on one CPU. See bench/README.md.
//
// Environment: BENCH_REPS (3), BENCH_SIZE (1G), BENCH_FILES (10000), BENCH_FILTER (comma-separated
// substrings of target or workload names), BENCH_PIN (both | unpinned | pinned), BENCH_CPU (0),
// BENCH_QUIET (3: seconds to wait for other load to pass before each sample, at most 60 times
// that over the run).
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { ensureRootfsTar } from './fixture';
import { markdown, type Sample, summarize } from './report';
import { allTargets, checkTargetTools, type Target } from './targets';
import {
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
import { allWorkloads, buildHelpers, type Workload, type WorkloadContext } from './workloads';

const URING_PARAM = '/sys/module/fuse/parameters/enable_uring';

interface Config {
  reps: number;
  size: number;
  files: number;
  quiet: number;
  pins: { name: string; cpus: string | undefined }[];
  targets: Target[];
  workloads: Workload[];
}

function config(): Config {
  const env = process.env;
  const reps = Number(env.BENCH_REPS ?? 3);
  if (!Number.isInteger(reps) || reps < 1) throw new Error('BENCH_REPS must be a positive integer');
  const size = parseSize(env.BENCH_SIZE ?? '1G');
  if (size < 2 ** 20) throw new Error('BENCH_SIZE must be at least 1M');
  const files = Number(env.BENCH_FILES ?? 10000);
  if (!Number.isInteger(files) || files < 1)
    throw new Error('BENCH_FILES must be a positive integer');
  const quiet = Number(env.BENCH_QUIET ?? 3);
  if (!(quiet >= 0)) throw new Error('BENCH_QUIET must be a number of seconds');
  const cpu = env.BENCH_CPU ?? '0';
  const pinModes = { unpinned: undefined, pinned: cpu };
  const pinSel = env.BENCH_PIN ?? 'both';
  if (!['both', 'unpinned', 'pinned'].includes(pinSel))
    throw new Error('BENCH_PIN must be both, unpinned or pinned');
  const pins = Object.entries(pinModes)
    .filter(([n]) => pinSel === 'both' || pinSel === n)
    .map(([n, cpus]) => ({ name: n === 'pinned' ? `pinned to CPU ${cpu}` : n, cpus }));

  let targets = allTargets();
  let workloads = allWorkloads();
  const terms = (env.BENCH_FILTER ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (terms.length) {
    const tHit = (n: string): boolean => terms.some((f) => n.includes(f));
    const wMatch = (w: Workload, f: string): boolean =>
      w.name.includes(f) || w.metrics.some((m) => m.key.includes(f));
    const wHit = (w: Workload): boolean => terms.some((f) => wMatch(w, f));
    const unknown = terms.filter(
      (f) => !targets.some((t) => t.name.includes(f)) && !workloads.some((w) => wMatch(w, f)),
    );
    if (unknown.length)
      throw new Error(`BENCH_FILTER: ${unknown.join(', ')} matches no target or workload`);
    // Terms naming targets select targets, terms naming workloads select workloads; native always
    // runs because every ratio is relative to it.
    if (targets.some((t) => t.name !== 'native' && tHit(t.name)))
      targets = targets.filter((t) => t.name === 'native' || tHit(t.name));
    if (workloads.some(wHit)) workloads = workloads.filter(wHit);
  }
  return { reps, size, files, quiet, pins, targets, workloads };
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

/** Sets up a target, retrying for a while: the addon may be being rebuilt right now. */
async function setupTarget(t: Target, cpus: string | undefined, size: number): Promise<string> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await t.setup({ cpus, size });
    } catch (e) {
      await t.teardown().catch(() => undefined);
      if (attempt >= 10) throw e;
      log(`${t.name}: setup failed (${e instanceof Error ? e.message : String(e)}), retrying`);
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
  const fio = (await run('fio', ['--version'])).stdout.trim();
  return {
    date: new Date().toISOString(),
    kernel: os.release(),
    cpu: `${cpu} × ${os.cpus().length}`,
    memory: `${Math.round(os.totalmem() / 2 ** 30)} GiB`,
    fusekit: `${head}${dirty ? ' + uncommitted changes in native/ or lib/' : ''}`,
    fio,
    size: formatSize(cfg.size),
    reps: String(cfg.reps),
    files: String(cfg.files),
  };
}

async function main(): Promise<void> {
  const cfg = config();
  if (process.getuid?.() !== 0)
    throw new Error('the bench needs root (drop_caches, passthrough, mounts)');
  const started = Date.now();
  const active = new Set<Target>();
  let uringRestore: string | undefined;
  let cleaning: Promise<void> | undefined;
  let aborting = false;

  const cleanup = (): Promise<void> =>
    (cleaning ??= (async () => {
      for (const c of liveChildren) c.kill('SIGTERM');
      for (const t of active)
        await t.teardown().catch((e: unknown) => log(`${t.name}: teardown: ${String(e)}`));
      active.clear();
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
    })());
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      log(`${sig}: cleaning up`);
      aborting = true;
      void cleanup().finally(() => process.exit(130));
    });
  }

  try {
    // Leftovers of a killed earlier run would fail the mounts.
    for (const mp of await mountsUnder(path.join(FIXTURES, 'mnt'))) await forceUnmount(mp);
    if ((await run('sh', ['-c', 'command -v fio'])).code !== 0)
      await check('apt-get', ['install', '-y', 'fio']);
    await buildHelpers();
    await checkTargetTools(cfg.targets);
    await ensureRootfsTar();

    let targets = cfg.targets;
    if (targets.some((t) => t.needsUring)) {
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
        targets = targets.filter((t) => !t.needsUring);
      }
    }
    // All fixtures exist before anything is timed.
    for (const t of targets) await t.prepare(cfg.size);

    const env = await environment(cfg);
    log(`targets: ${targets.map((t) => t.name).join(', ')}`);
    log(
      `workloads: ${cfg.workloads.map((w) => w.name).join(', ')}; size ${env.size}, ${cfg.reps} reps`,
    );

    let quietBudget = 60 * cfg.quiet;
    const stamp0 = await addonStamp();
    let addonChanged = false;
    const samples: Sample[] = [];
    const info: Record<string, Record<string, unknown>> = {};
    for (const pin of cfg.pins) {
      for (let rep = 0; rep < cfg.reps; rep++) {
        // Fresh mounts every repetition; the start of the target order rotates so no target
        // always follows the same neighbour.
        const order = targets.map((_, i) => targets[(i + rep) % targets.length]!);
        const dirs = new Map<Target, string>();
        try {
          for (const t of order) {
            if (aborting) throw new Error('interrupted');
            active.add(t);
            try {
              dirs.set(t, await setupTarget(t, pin.cpus, cfg.size));
              if (t.info) info[`${pin.name}/${t.name}`] = t.info;
            } catch (e) {
              log(`${t.name}: setup failed: ${e instanceof Error ? e.message : String(e)}`);
              active.delete(t);
            }
          }
          for (const w of cfg.workloads) {
            for (const t of order) {
              // After an interrupt the mounts are gone: writing on would land in the bare mount points.
              if (aborting) throw new Error('interrupted');
              const dir = dirs.get(t);
              if (!dir) continue;
              const ctx: WorkloadContext = {
                cpus: pin.cpus,
                size: cfg.size,
                files: cfg.files,
                daemonCpu: async () => (t.cpuSeconds ? t.cpuSeconds() : 0),
                cpu: {},
              };
              // The wait is capped per sample and per run: on a machine that never gets quiet it
              // would only make the run longer.
              const t0 = Date.now();
              const busy = await waitQuiet(Math.min(cfg.quiet, Math.max(0, quietBudget)));
              quietBudget -= (Date.now() - t0) / 1000;
              const s: Sample = {
                pin: pin.name,
                rep,
                target: t.name,
                workload: w.name,
                values: {},
                load: await loadavg(),
                busy,
              };
              const before = await snapshot(t);
              try {
                s.values = await w.run(dir, ctx);
              } catch (e) {
                s.error = e instanceof Error ? e.message : String(e);
                log(`${pin.name} rep ${rep + 1} ${w.name} on ${t.name} failed: ${s.error}`);
              }
              s.cpu = ctx.cpu;
              s.ops = opDelta(before, await snapshot(t));
              samples.push(s);
              // Metadata of the cleanup is written back now, not during the next sample.
              await check('sync', []);
              log(
                `${pin.name} rep ${rep + 1}/${cfg.reps} ${w.name.padEnd(8)} ${t.name.padEnd(24)} ${Object.entries(
                  s.values,
                )
                  .map(([k, v]) => `${k}=${v < 100 ? v.toFixed(4) : v.toFixed(0)}`)
                  .join(' ')}`,
              );
            }
          }
        } finally {
          for (const t of order) {
            if (!active.has(t)) continue;
            await t.teardown();
            active.delete(t);
          }
          if ((await addonStamp()) !== stamp0 && !addonChanged) {
            addonChanged = true;
            log('WARNING: build/Release/fusekit.node changed during the run');
          }
        }
      }
    }

    const summary = summarize(
      samples,
      (w) => cfg.workloads.find((x) => x.name === w)?.metrics.map((m) => m.key) ?? [],
    );
    const metrics = cfg.workloads.flatMap((w) => w.metrics);
    const notes = Object.fromEntries(targets.map((t) => [t.name, t.note]));
    const loads = samples.map((s) => s.load);
    const busy = samples.map((s) => s.busy).sort((a, b) => a - b);
    const busyMedian = busy[Math.floor(busy.length / 2)] ?? 0;
    const noisy = busy.filter((b) => b >= 0.15).length;
    const minutes = ((Date.now() - started) / 60000).toFixed(1);
    const md = [
      `## Benchmark ${env.date!.slice(0, 16).replace('T', ' ')} UTC`,
      '',
      `${env.kernel}, ${env.cpu}, ${env.memory}; fusekit ${env.fusekit}; ${env.fio}. ` +
        `Data file ${env.size}, ${env.files} files, median of ${env.reps} interleaved repetitions ` +
        `(${minutes} min). Other load on the machine: 1-min load average ${Math.min(...loads).toFixed(1)}–${Math.max(...loads).toFixed(1)}; ` +
        `CPU busy just before a sample (bench idle) median ${(busyMedian * 100).toFixed(0)}%, ${noisy} of ${busy.length} samples started above 15% after waiting up to ${cfg.quiet} s (${Math.round(60 * cfg.quiet - quietBudget)} s in all).`,
      '',
      ...(addonChanged
        ? [
            '**Warning: the fusekit addon was rebuilt during this run; its figures mix builds.**',
            '',
          ]
        : []),
      'Cells: median value (speed relative to native: throughput target÷native, times native÷target — ' +
        'higher is better either way). "~" marks a spread (max−min over the repetitions) above 20% of the median. ' +
        "The fusekit head-to-head targets use passthrough_hp's caching: entry, attribute and negative timeouts of 86400 s.",
      '',
      markdown(
        summary,
        cfg.pins.map((p) => p.name),
        targets.map((t) => t.name),
        metrics,
        notes,
      ),
      '',
    ].join('\n');
    process.stdout.write(md);
    await fsp.mkdir(RESULTS, { recursive: true });
    const stamp = env.date!.slice(0, 19).replace(/:/g, '-');
    await fsp.writeFile(path.join(RESULTS, `${stamp}.md`), md);
    await fsp.writeFile(
      path.join(RESULTS, `${stamp}.json`),
      JSON.stringify(
        {
          environment: env,
          targets: targets.map((t) => ({ name: t.name, note: t.note })),
          info,
          metrics,
          summary,
          samples,
        },
        null,
        1,
      ),
    );
    log(`results: bench/results/${stamp}.md and .json (${minutes} min)`);
  } finally {
    await cleanup();
    const left = await mountsUnder(path.join(FIXTURES, 'mnt'));
    if (left.length) log(`WARNING: mounts left behind: ${left.join(', ')}`);
  }
}

main().catch((e: unknown) => {
  log(`failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
  process.exitCode = 1;
});
