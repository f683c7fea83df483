// A strict parser of the Prometheus text exposition format (0.0.4) and of OpenMetrics 1.0 text,
// enough to hold fusekit's metrics to the rules scrapers rely on. It throws on the first
// violation, naming the line.

export type MetricType = 'counter' | 'gauge' | 'histogram' | 'summary' | 'untyped' | 'unknown';

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
  line: number;
}

export interface Family {
  name: string;
  type: MetricType;
  help: string;
  samples: Sample[];
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

function parseValue(s: string, where: string): number {
  if (s === '+Inf' || s === 'Inf') return Infinity;
  if (s === '-Inf') return -Infinity;
  if (s === 'NaN') return NaN;
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(s))
    throw new Error(`${where}: bad value ${s}`);
  return Number(s);
}

/** name{a="b",c="d"} value — label values with \\, \" and \n escapes. */
function parseSample(text: string, where: string): Omit<Sample, 'line'> {
  let i = 0;
  while (i < text.length && /[a-zA-Z0-9_:]/.test(text[i]!)) i++;
  const name = text.slice(0, i);
  if (!METRIC_NAME.test(name)) throw new Error(`${where}: bad metric name '${name}'`);
  const labels: Record<string, string> = {};
  if (text[i] === '{') {
    i++;
    while (text[i] !== '}') {
      let j = i;
      while (j < text.length && text[j] !== '=') j++;
      const lname = text.slice(i, j);
      if (!LABEL_NAME.test(lname)) throw new Error(`${where}: bad label name '${lname}'`);
      if (lname in labels) throw new Error(`${where}: label ${lname} twice`);
      if (text[j + 1] !== '"') throw new Error(`${where}: label value must be quoted`);
      let v = '';
      let k = j + 2;
      for (;;) {
        const c = text[k];
        if (c === undefined) throw new Error(`${where}: unterminated label value`);
        if (c === '"') break;
        if (c === '\n') throw new Error(`${where}: raw newline in a label value`);
        if (c === '\\') {
          const e = text[k + 1];
          if (e === 'n') v += '\n';
          else if (e === '\\') v += '\\';
          else if (e === '"') v += '"';
          else throw new Error(`${where}: bad escape \\${e ?? ''}`);
          k += 2;
          continue;
        }
        v += c;
        k++;
      }
      labels[lname] = v;
      i = k + 1;
      if (text[i] === ',') i++;
      else if (text[i] !== '}') throw new Error(`${where}: expected , or } after a label`);
    }
    i++;
  }
  if (text[i] !== ' ') throw new Error(`${where}: expected one space before the value`);
  const rest = text.slice(i + 1).split(' ');
  // An optional timestamp may follow; fusekit never writes one.
  if (rest.length !== 1) throw new Error(`${where}: unexpected timestamp or trailing text`);
  return { name, labels, value: parseValue(rest[0]!, where) };
}

const labelKey = (l: Record<string, string>, skip?: string): string =>
  JSON.stringify(
    Object.entries(l)
      .filter(([k]) => k !== skip)
      .sort(([a], [b]) => (a < b ? -1 : 1)),
  );

/** The sample names a family of this type may have. */
function sampleNames(fam: Family, openMetrics: boolean): string[] {
  switch (fam.type) {
    case 'counter':
      // Prometheus text: the family is named with _total; OpenMetrics: without.
      return openMetrics ? [`${fam.name}_total`, `${fam.name}_created`] : [fam.name];
    case 'histogram':
      return [`${fam.name}_bucket`, `${fam.name}_sum`, `${fam.name}_count`, `${fam.name}_created`];
    default:
      return [fam.name];
  }
}

/**
 * Parses and checks: HELP then TYPE before a family's samples, each family once and its samples
 * all together, metric and label names, escapes, values, no duplicate series, counters named
 * *_total, histograms with cumulative `le` buckets ending at +Inf == _count and a _sum, and for
 * OpenMetrics the final '# EOF'.
 */
export function parseExposition(text: string, openMetrics: boolean): Map<string, Family> {
  if (!text.endsWith('\n')) throw new Error('the exposition must end with a newline');
  const lines = text.slice(0, -1).split('\n');
  const families = new Map<string, Family>();
  const series = new Set<string>();
  let current: Family | undefined;
  let pendingHelp: { name: string; help: string } | undefined;
  let eof = false;
  lines.forEach((line, idx) => {
    const where = `line ${idx + 1} (${JSON.stringify(line)})`;
    if (eof) throw new Error(`${where}: text after # EOF`);
    if (line === '') {
      if (openMetrics) throw new Error(`${where}: empty line`);
      return;
    }
    if (line === '# EOF') {
      if (!openMetrics) throw new Error(`${where}: # EOF is OpenMetrics only`);
      eof = true;
      return;
    }
    const help = /^# HELP (\S+) (.*)$/.exec(line);
    if (help) {
      if (!METRIC_NAME.test(help[1]!)) throw new Error(`${where}: bad family name`);
      if (families.has(help[1]!)) throw new Error(`${where}: family ${help[1]} declared again`);
      pendingHelp = { name: help[1]!, help: help[2]! };
      return;
    }
    const type = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (type) {
      const [, name, t] = type as unknown as [string, string, MetricType];
      if (!METRIC_NAME.test(name)) throw new Error(`${where}: bad family name`);
      if (families.has(name)) throw new Error(`${where}: family ${name} declared again`);
      const types = openMetrics
        ? ['counter', 'gauge', 'histogram', 'summary', 'unknown']
        : ['counter', 'gauge', 'histogram', 'summary', 'untyped'];
      if (!types.includes(t)) throw new Error(`${where}: bad type ${t}`);
      if (!pendingHelp || pendingHelp.name !== name)
        throw new Error(`${where}: TYPE without a HELP line for ${name} right before it`);
      if (t === 'counter' && !openMetrics && !name.endsWith('_total'))
        throw new Error(`${where}: counter ${name} must end in _total`);
      if (t === 'counter' && openMetrics && name.endsWith('_total'))
        throw new Error(`${where}: an OpenMetrics counter family is named without _total`);
      current = { name, type: t, help: pendingHelp.help, samples: [] };
      families.set(name, current);
      pendingHelp = undefined;
      return;
    }
    if (line.startsWith('#')) throw new Error(`${where}: unknown comment line`);
    if (!current) throw new Error(`${where}: a sample before any TYPE line`);
    const s = parseSample(line, where);
    if (!sampleNames(current, openMetrics).includes(s.name)) {
      const owner = [...families.values()].find((f) =>
        sampleNames(f, openMetrics).includes(s.name),
      );
      throw new Error(
        owner
          ? `${where}: a sample of ${owner.name} outside its group (after ${current.name})`
          : `${where}: sample ${s.name} does not belong to family ${current.name}`,
      );
    }
    const key = s.name + labelKey(s.labels);
    if (series.has(key)) throw new Error(`${where}: duplicate series`);
    series.add(key);
    current.samples.push({ ...s, line: idx + 1 });
  });
  if (openMetrics && !eof) throw new Error('OpenMetrics text must end with # EOF');
  for (const f of families.values()) {
    if (f.samples.length === 0) throw new Error(`family ${f.name} has no samples`);
    if (f.type === 'counter')
      for (const s of f.samples)
        if (!(s.value >= 0)) throw new Error(`line ${s.line}: counter value ${s.value} < 0`);
    if (f.type === 'histogram') checkHistogram(f);
  }
  return families;
}

function checkHistogram(f: Family): void {
  const groups = new Map<string, { buckets: Sample[]; sum?: Sample; count?: Sample }>();
  const group = (s: Sample): { buckets: Sample[]; sum?: Sample; count?: Sample } => {
    const k = labelKey(s.labels, 'le');
    let g = groups.get(k);
    if (!g) groups.set(k, (g = { buckets: [] }));
    return g;
  };
  for (const s of f.samples) {
    if (s.name.endsWith('_bucket')) {
      if (s.labels.le === undefined) throw new Error(`line ${s.line}: a bucket without le`);
      group(s).buckets.push(s);
    } else if (s.name.endsWith('_sum')) {
      group(s).sum = s;
    } else if (s.name.endsWith('_count')) {
      group(s).count = s;
    }
  }
  for (const [k, g] of groups) {
    if (!g.sum || !g.count) throw new Error(`histogram ${f.name}${k}: _sum or _count missing`);
    if (g.buckets.length === 0) throw new Error(`histogram ${f.name}${k}: no buckets`);
    let le = -Infinity;
    let cum = 0;
    for (const b of g.buckets) {
      const bound = parseValue(b.labels.le!, `line ${b.line}`);
      if (!(bound > le)) throw new Error(`line ${b.line}: le must increase`);
      if (b.value < cum) throw new Error(`line ${b.line}: buckets must be cumulative`);
      le = bound;
      cum = b.value;
    }
    const last = g.buckets[g.buckets.length - 1]!;
    if (last.labels.le !== '+Inf') throw new Error(`histogram ${f.name}${k}: no +Inf bucket last`);
    if (last.value !== g.count.value)
      throw new Error(
        `histogram ${f.name}${k}: +Inf bucket ${last.value} != _count ${g.count.value}`,
      );
    if (!(g.sum.value >= 0)) throw new Error(`histogram ${f.name}${k}: bad _sum`);
  }
}

/** The value of the one sample of `name` whose labels include `labels`. */
export function sampleValue(
  families: Map<string, Family>,
  name: string,
  labels: Record<string, string>,
): number | undefined {
  for (const f of families.values())
    for (const s of f.samples)
      if (s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
        return s.value;
  return undefined;
}
