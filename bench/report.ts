// Turns samples into Markdown: per suite, one table per pin mode (median per target and metric,
// with the ratios to the suite's baselines), then the goals checked against those medians.
import type { Metric } from './workloads';
import { median } from './util';

export interface Sample {
  suite: string;
  pin: string;
  rep: number;
  target: string;
  workload: string;
  /** Metric key -> raw value (bytes/s, ops/s or seconds). */
  values: Record<string, number>;
  error?: string;
  /** /proc/loadavg 1-minute figure when the sample started (other load on the machine). */
  load: number;
  /** Share of all CPUs busy right before the sample, while the bench itself was idle. */
  busy: number;
  /** Metric key -> CPU seconds of its timed part (workload process + daemon). */
  cpu?: Record<string, number>;
  /** Wall time of the whole sample, cleanup and sync included (for planning run times). */
  seconds?: number;
  /** Daemon op counts during this sample (fusekit only): op -> [count, mean µs]. */
  ops?: Record<string, [number, number]>;
}

type Table = Record<string, Record<string, Record<string, number>>>;

export interface Summary {
  /** pin -> target -> metric key -> median raw value */
  medians: Table;
  /** pin -> target -> metric key -> (max - min) / median over the repetitions */
  spread: Table;
  /** pin -> target -> metric key -> median CPU seconds (workload + daemon) */
  cpu: Table;
  /** Samples that failed: pin, target, the metrics they would have given, and why. */
  failures: {
    pin: string;
    target: string;
    workload: string;
    rep: number;
    keys: string[];
    error: string;
  }[];
}

function mediansOf(
  samples: Sample[],
  pick: (s: Sample) => Record<string, number> | undefined,
): { med: Table; spread: Table } {
  const groups = new Map<string, number[]>();
  for (const s of samples) {
    if (s.error) continue;
    for (const [k, v] of Object.entries(pick(s) ?? {})) {
      const id = JSON.stringify([s.pin, s.target, k]);
      let g = groups.get(id);
      if (!g) groups.set(id, (g = []));
      g.push(v);
    }
  }
  const med: Table = {};
  const spread: Table = {};
  for (const [id, xs] of groups) {
    const [pin, target, key] = JSON.parse(id) as [string, string, string];
    const m = median(xs);
    ((med[pin] ??= {})[target] ??= {})[key] = m;
    ((spread[pin] ??= {})[target] ??= {})[key] =
      xs.length > 1 ? (Math.max(...xs) - Math.min(...xs)) / m : 0;
  }
  return { med, spread };
}

export function summarize(samples: Sample[], metricsOf: (workload: string) => string[]): Summary {
  const values = mediansOf(samples, (s) => s.values);
  const failures = samples
    .filter((s) => s.error !== undefined)
    .map((s) => ({
      pin: s.pin,
      target: s.target,
      workload: s.workload,
      rep: s.rep,
      keys: metricsOf(s.workload),
      error: s.error!,
    }));
  return {
    medians: values.med,
    spread: values.spread,
    cpu: mediansOf(samples, (s) => s.cpu).med,
    failures,
  };
}

/** Speed relative to `base`, higher is better whatever the metric's kind. */
export function ratio(
  metric: Metric,
  value: number | undefined,
  base: number | undefined,
): number | undefined {
  if (value === undefined || base === undefined || !(value > 0) || !(base > 0)) return undefined;
  return metric.kind === 'rate' ? value / base : base / value;
}

function fmtValue(metric: Metric, raw: number | undefined): string {
  if (raw === undefined) return '—';
  const v = raw * metric.scale;
  const a = Math.abs(v);
  if (a >= 100) return v.toFixed(0);
  if (a >= 10) return v.toFixed(1);
  if (a >= 1 || v === 0) return v.toFixed(2);
  return v.toPrecision(2);
}

function fmtRatio(r: number | undefined): string {
  return r === undefined ? '—' : r.toFixed(2);
}

function isFusekit(target: string): boolean {
  return target.startsWith('fusekit');
}

function isHp(target: string): boolean {
  return target.startsWith('passthrough_hp');
}

/** Checks a suite's goals against the medians of one pin mode; returns Markdown lines. */
export type GoalsFn = (summary: Summary, pin: string, ts: string[], metrics: Metric[]) => string[];

export interface TableOptions {
  /**
   * Targets the ratios are relative to, in order: each cell shows one ratio per baseline (a
   * baseline's own cell only those to the baselines before it). None: values only.
   */
  baselines: string[];
  goals?: GoalsFn;
}

const esc = (t: string): string => t.replace(/_/g, '\\_');

export function markdown(
  summary: Summary,
  pins: string[],
  targets: string[],
  metrics: Metric[],
  notes: Record<string, string>,
  opts: TableOptions,
): string {
  const out: string[] = [];
  const targetsOf = (pin: string): string[] => targets.filter((t) => summary.medians[pin]?.[t]);
  for (const pin of pins) {
    const med = summary.medians[pin];
    if (!med) continue;
    const ts = targetsOf(pin);
    out.push(`### ${pin}`, '');
    out.push(`| metric | ${ts.map(esc).join(' | ')} |`);
    out.push(`|---|${ts.map(() => '---:').join('|')}|`);
    for (const m of metrics) {
      if (!ts.some((t) => med[t]?.[m.key] !== undefined)) continue;
      const cells = ts.map((t) => {
        const v = med[t]?.[m.key];
        const sp = summary.spread[pin]?.[t]?.[m.key];
        const noisy = sp !== undefined && sp > 0.2 ? '~' : '';
        const failed = summary.failures.some(
          (f) => f.pin === pin && f.target === t && f.keys.includes(m.key),
        )
          ? ' †'
          : '';
        const k = opts.baselines.indexOf(t);
        const bases = k < 0 ? opts.baselines : opts.baselines.slice(0, k);
        const ratios =
          m.ratio === false || v === undefined
            ? []
            : bases.map((b) => fmtRatio(ratio(m, v, med[b]?.[m.key])));
        const r = ratios.length ? ` (${ratios.join(' / ')})` : '';
        return `${noisy}${fmtValue(m, v)}${r}${failed}`;
      });
      out.push(`| ${m.label}, ${m.unit} | ${cells.join(' | ')} |`);
    }
    out.push('');
    const failures = summary.failures.filter((f) => f.pin === pin);
    if (failures.length) {
      out.push('† failed samples (left out of the medians):', '');
      for (const f of failures)
        out.push(
          `- ${f.target}, ${f.workload}, repetition ${f.rep + 1}: ${f.error.split('\n').slice(0, 2).join(' ').slice(0, 300)}`,
        );
      out.push('');
    }
    const goals = opts.goals?.(summary, pin, ts, metrics) ?? [];
    if (goals.length) out.push(...goals, '');
    const cpu = cpuTable(summary, pin, ts, metrics, opts.baselines[0]);
    if (cpu.length) out.push(...cpu, '');
  }
  out.push('Targets:', '');
  for (const t of targets) if (notes[t]) out.push(`- **${t}**: ${notes[t]}`);
  return out.join('\n');
}

/**
 * CPU time of the timed parts, workload process plus daemon: what the work costs, barely moved by
 * other load on the machine, unlike wall time.
 */
function cpuTable(
  summary: Summary,
  pin: string,
  ts: string[],
  metrics: Metric[],
  baseline: string | undefined,
): string[] {
  const cpu = summary.cpu[pin];
  if (!cpu) return [];
  const ms = metrics.filter(
    (m) => m.ratio !== false && ts.some((t) => cpu[t]?.[m.key] !== undefined),
  );
  if (!ms.length) return [];
  const base = baseline ? cpu[baseline] : undefined;
  const out = [
    `CPU time of the timed part (workload process + daemon, median), ms${baseline ? ` (${baseline} ÷ target)` : ''}:`,
    '',
    `| metric | ${ts.map(esc).join(' | ')} |`,
    `|---|${ts.map(() => '---:').join('|')}|`,
  ];
  const fmt = (v: number | undefined): string =>
    v === undefined ? '—' : v * 1e3 >= 100 ? (v * 1e3).toFixed(0) : (v * 1e3).toFixed(1);
  for (const m of ms) {
    const cells = ts.map((t) => {
      const v = cpu[t]?.[m.key];
      const n = base?.[m.key];
      if (t === baseline || v === undefined || n === undefined || !(v > 0)) return fmt(v);
      return `${fmt(v)} (${(n / v).toFixed(2)})`;
    });
    out.push(`| ${m.label} | ${cells.join(' | ')} |`);
  }
  return out;
}

/**
 * One goal of a suite: every candidate's speed relative to `against` (higher is better; when
 * `against` names several targets, the fastest of them on each metric) must be at least `min`
 * (more than `min` with `strict`) on every metric the goal applies to.
 */
export interface GoalCheck {
  title: string;
  candidates: string[];
  against: string[];
  applies: (m: Metric) => boolean;
  min: number;
  strict?: boolean;
}

/**
 * The verdict of each goal for each candidate: met, missed (with the misses) or not measured
 * (a target or metric failed or did not run, so the goal cannot be judged).
 */
export function checkGoals(
  summary: Summary,
  pin: string,
  ts: string[],
  metrics: Metric[],
  checks: GoalCheck[],
): string[] {
  const med = summary.medians[pin] ?? {};
  const out: string[] = [];
  for (const c of checks) {
    const cands = c.candidates.filter((t) => ts.includes(t));
    const against = c.against.filter((t) => ts.includes(t));
    const ms = metrics.filter((m) => m.ratio !== false && c.applies(m));
    if (!cands.length || !ms.length) continue;
    if (!against.length) {
      out.push(`- ${c.title}: not judged (${c.against.join(', ')} did not run).`);
      continue;
    }
    const verdicts = cands.map((t) => {
      const misses: string[] = [];
      const unmeasured: string[] = [];
      for (const m of ms) {
        let best: number | undefined;
        for (const a of against) {
          const v = med[a]?.[m.key];
          if (v !== undefined && (best === undefined || (m.kind === 'rate' ? v > best : v < best)))
            best = v;
        }
        const r = ratio(m, med[t]?.[m.key], best);
        if (r === undefined) unmeasured.push(m.label);
        else if (c.strict ? !(r > c.min) : !(r >= c.min)) misses.push(`${m.label} ${r.toFixed(2)}`);
      }
      const parts: string[] = [];
      if (misses.length) parts.push(`**missed** (${misses.join('; ')})`);
      if (unmeasured.length) parts.push(`not measured: ${unmeasured.join(', ')}`);
      return `${esc(t)}: ${parts.length ? parts.join('; ') : 'met'}`;
    });
    out.push(`- ${c.title}: ${verdicts.join(' — ')}.`);
  }
  return out.length
    ? ['Goals (speed relative to the comparison, higher is better):', '', ...out]
    : [];
}

/**
 * Passthrough suite: the data path of the passthrough targets should reach 0.95 of native, and
 * every metadata figure of fusekit should be at least as fast as passthrough_hp's best mode (a
 * table of fusekit speed ÷ best passthrough_hp speed, then the verdicts).
 */
export function passthroughGoals(
  summary: Summary,
  pin: string,
  ts: string[],
  metrics: Metric[],
): string[] {
  const med = summary.medians[pin]!;
  const fk = ts.filter(isFusekit);
  const hp = ts.filter(isHp);
  const out: string[] = [];
  const meta = metrics.filter((m) => m.group === 'meta');
  if (hp.length && fk.length) {
    out.push(
      `Metadata vs passthrough_hp's best mode (fusekit speed ÷ best passthrough_hp speed; ≥ 1.00 meets the goal):`,
      '',
    );
    out.push(`| metric | best passthrough_hp | ${fk.map(esc).join(' | ')} |`);
    out.push(`|---|---|${fk.map(() => '---:').join('|')}|`);
    for (const m of meta) {
      let best: { t: string; v: number } | undefined;
      for (const t of hp) {
        const v = med[t]?.[m.key];
        if (v === undefined) continue;
        if (!best || (m.kind === 'rate' ? v > best.v : v < best.v)) best = { t, v };
      }
      if (!best) continue;
      const cells = fk.map((t) => {
        const r = ratio(m, med[t]?.[m.key], best.v);
        return r === undefined ? '—' : r < 1 ? `**${r.toFixed(2)}**` : r.toFixed(2);
      });
      out.push(
        `| ${m.label} | ${fmtValue(m, best.v)} ${m.unit} (${esc(best.t)}) | ${cells.join(' | ')} |`,
      );
    }
    out.push('');
  }
  out.push(
    ...checkGoals(summary, pin, ts, metrics, [
      {
        title: 'data path ≥ 0.95 of native (passthrough targets)',
        candidates: fk.filter((t) => !t.includes('pt=off')),
        against: ['native'],
        applies: (m) => m.group === 'data',
        min: 0.95,
      },
      {
        title: "metadata ≥ 1.00 of passthrough_hp's best mode",
        candidates: fk,
        against: hp,
        applies: (m) => m.group === 'meta',
        min: 1,
      },
    ]),
  );
  return out;
}

/**
 * A table of slowdown factors (reference speed ÷ target speed, so 1.30 means 30% slower than the
 * reference) of every ratio metric, for the given columns; ● marks the rows `mark` selects.
 */
export function factorTable(o: {
  summary: Summary;
  pin: string;
  ts: string[];
  metrics: Metric[];
  reference: string;
  columns: string[];
  mark: (m: Metric) => boolean;
  /** What the ● rows are, for the legend. */
  marked: string;
  title: string;
}): string[] {
  const med = o.summary.medians[o.pin]!;
  const ref = med[o.reference];
  const cols = o.columns.filter((t) => o.ts.includes(t) && t !== o.reference);
  if (!ref || !cols.length) return [];
  const out = [
    `${o.title}: slowdown vs ${esc(o.reference)} (its speed ÷ target speed; ● marks the ` +
      `${o.marked} rows):`,
    '',
    `| metric | ${cols.map(esc).join(' | ')} |`,
    `|---|${cols.map(() => '---:').join('|')}|`,
  ];
  for (const m of o.metrics) {
    if (m.ratio === false || ref[m.key] === undefined) continue;
    const cells = cols.map((t) => {
      const r = ratio(m, med[t]?.[m.key], ref[m.key]);
      return r === undefined ? '—' : `${(1 / r).toFixed(2)}×`;
    });
    out.push(`| ${o.mark(m) ? '● ' : ''}${m.label} | ${cells.join(' | ')} |`);
  }
  out.push('');
  return out;
}
