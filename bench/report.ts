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
 * Passthrough suite: the data path of the passthrough targets should reach 0.95 of native, and
 * every metadata figure of fusekit should be at least as fast as passthrough_hp's best mode.
 */
export function passthroughGoals(
  summary: Summary,
  pin: string,
  ts: string[],
  metrics: Metric[],
): string[] {
  const med = summary.medians[pin]!;
  const native = med['native'];
  const fk = ts.filter(isFusekit);
  const hp = ts.filter(isHp);
  const out: string[] = [];
  const data = metrics.filter((m) => m.group === 'data');
  const pt = fk.filter((t) => !t.includes('pt=off'));
  if (native && pt.length) {
    const misses: string[] = [];
    for (const t of pt)
      for (const m of data) {
        const r = ratio(m, med[t]?.[m.key], native[m.key]);
        if (r !== undefined && r < 0.95) misses.push(`${t} ${m.label} ${r.toFixed(2)}`);
      }
    out.push(
      misses.length
        ? `Data path (goal ≥ 0.95 of native, passthrough targets): **missed** — ${misses.join('; ')}.`
        : `Data path (goal ≥ 0.95 of native, passthrough targets): met.`,
    );
  }
  const meta = metrics.filter((m) => m.group === 'meta');
  if (hp.length && fk.length) {
    out.push(
      '',
      `Metadata vs passthrough_hp's best mode (fusekit speed ÷ best passthrough_hp speed; ≥ 1.00 meets the goal):`,
      '',
    );
    out.push(`| metric | best passthrough_hp | ${fk.join(' | ')} |`);
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
  }
  return out;
}

/**
 * "Within limit× of reference": a table of slowdown factors (reference speed ÷ target speed, so
 * 1.30 means 30% slower than the reference) of every ratio metric, for the candidates (whose goal
 * rows are checked, misses in bold) and for other targets shown for comparison; then a verdict.
 */
export function factorGoal(o: {
  summary: Summary;
  pin: string;
  ts: string[];
  metrics: Metric[];
  reference: string;
  limit: number;
  candidates: string[];
  others: string[];
  /** The metrics the goal is about (the other rows are shown for information). */
  goal: (m: Metric) => boolean;
  title: string;
}): string[] {
  const med = o.summary.medians[o.pin]!;
  const ref = med[o.reference];
  const cand = o.candidates.filter((t) => o.ts.includes(t));
  const cols = [...cand, ...o.others.filter((t) => o.ts.includes(t) && !cand.includes(t))];
  if (!ref || !cand.length) return [];
  const out = [
    `${o.title}: slowdown vs ${o.reference} (its speed ÷ target speed; ● marks the rows the ` +
      `goal is about, misses in bold):`,
    '',
    `| metric | ${cols.map(esc).join(' | ')} |`,
    `|---|${cols.map(() => '---:').join('|')}|`,
  ];
  const misses: string[] = [];
  for (const m of o.metrics) {
    if (m.ratio === false || ref[m.key] === undefined) continue;
    const isGoal = o.goal(m);
    const cells = cols.map((t) => {
      const r = ratio(m, med[t]?.[m.key], ref[m.key]);
      if (r === undefined) return '—';
      const f = 1 / r;
      const miss = isGoal && cand.includes(t) && f > o.limit;
      if (miss) misses.push(`${t} ${m.label} ${f.toFixed(2)}×`);
      return miss ? `**${f.toFixed(2)}×**` : `${f.toFixed(2)}×`;
    });
    out.push(`| ${isGoal ? '● ' : ''}${m.label} | ${cells.join(' | ')} |`);
  }
  out.push(
    '',
    misses.length
      ? `${o.title} (goal ≤ ${o.limit}× of ${o.reference}): **missed** — ${misses.join('; ')}.`
      : `${o.title} (goal ≤ ${o.limit}× of ${o.reference}): met.`,
  );
  return out;
}
