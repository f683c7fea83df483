/**
 * `fusekit stats|top|trace MOUNTPOINT`: views of a live mount through its control socket, so they
 * work for mounts made by any fusekit process.
 */
import { controlRequest, controlTrace } from './control';
import type { FsEvent, NativeOpCounters, NativeStats } from './native';

/** A latency quantile (seconds) from log2 nanosecond buckets: the bucket's upper bound. */
export function quantile(buckets: number[], q: number): number {
  const total = buckets.reduce((a, b) => a + b, 0);
  if (total === 0) return 0;
  let seen = 0;
  for (let i = 0; i < buckets.length; i++) {
    seen += buckets[i]!;
    if (seen >= q * total) return 2 ** (i + 1) / 1e9;
  }
  return 2 ** buckets.length / 1e9;
}

function fmtTime(s: number): string {
  if (s === 0) return '-';
  if (s < 1e-6) return `${(s * 1e9).toFixed(0)}ns`;
  if (s < 1e-3) return `${(s * 1e6).toFixed(1)}us`;
  if (s < 1) return `${(s * 1e3).toFixed(1)}ms`;
  return `${s.toFixed(2)}s`;
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  return rows
    .map((r) =>
      r.map((v, c) => (c === 0 ? v.padEnd(widths[c]!) : v.padStart(widths[c]!))).join('  '),
    )
    .join('\n');
}

export function formatStats(mountpoint: string, s: NativeStats): string {
  const rows = [['op', 'count', 'errors', 'avg', 'p50', 'p99', 'top errno']];
  for (const [op, c] of Object.entries(s.ops).sort((a, b) => b[1].count - a[1].count)) {
    const topErr = Object.entries(c.errnos).sort((a, b) => b[1] - a[1])[0];
    rows.push([
      op,
      String(c.count),
      String(c.errors),
      fmtTime(c.count ? c.totalNs / c.count / 1e9 : 0),
      fmtTime(quantile(c.latencyLog2Ns, 0.5)),
      fmtTime(quantile(c.latencyLog2Ns, 0.99)),
      topErr ? `${topErr[0]} ${topErr[1]}` : '',
    ]);
  }
  return [
    `${mountpoint}: transport ${s.transport} (io_uring ${s.requests.ioUring}, /dev/fuse ${s.requests.dev} requests)`,
    `passthrough ${s.passthrough.enabled ? 'on' : 'off'}: ${s.passthrough.opens} opens, ${s.passthrough.backingActive} backing files, ` +
      `${s.passthrough.directOpens} direct, ${s.passthrough.cachedOpens} cached, ${s.passthrough.failures} failures`,
    `daemon bytes: read ${s.daemonBytes.read}, written ${s.daemonBytes.written}`,
    `inodes ${s.inodes} (~${Math.round(s.inodeMemory / 1024)} KiB), inode fds: ${s.inodeFds.mode} ${s.inodeFds.open}` +
      (s.inodeFds.capacity ? `/${s.inodeFds.capacity}` : ''),
    `cache: watch ${s.cache.watch}, ${s.cache.invalidations} invalidations, ${s.cache.overflows} overflows; ` +
      `events: ${s.events.recorded} recorded, ${s.events.dropped} dropped`,
    '',
    table(rows),
  ].join('\n');
}

export async function statsCommand(
  mountpoint: string,
  format: 'text' | 'json' | 'prometheus',
): Promise<string> {
  if (format === 'prometheus')
    return String((await controlRequest(mountpoint, { cmd: 'metrics' })).text);
  const r = await controlRequest(mountpoint, { cmd: 'stats' });
  if (format === 'json') return JSON.stringify(r.stats, null, 2) + '\n';
  return formatStats(mountpoint, r.stats as NativeStats) + '\n';
}

function delta(a: NativeOpCounters | undefined, b: NativeOpCounters): NativeOpCounters {
  if (!a) return b;
  return {
    count: b.count - a.count,
    errors: b.errors - a.errors,
    totalNs: b.totalNs - a.totalNs,
    latencyLog2Ns: b.latencyLog2Ns.map((v, i) => v - (a.latencyLog2Ns[i] ?? 0)),
    errnos: Object.fromEntries(
      Object.entries(b.errnos).map(([k, v]) => [k, v - (a.errnos[k] ?? 0)]),
    ),
  };
}

/** One screen of `fusekit top`: per-operation rates over the last interval. */
export function formatTop(
  mountpoint: string,
  prev: NativeStats,
  cur: NativeStats,
  seconds: number,
): string {
  const rows = [['op', 'ops/s', 'errors/s', 'avg', 'p99']];
  const ops = Object.entries(cur.ops)
    .map(([op, c]) => [op, delta(prev.ops[op], c)] as const)
    .filter(([, d]) => d.count > 0)
    .sort((a, b) => b[1].count - a[1].count);
  for (const [op, d] of ops) {
    rows.push([
      op,
      (d.count / seconds).toFixed(0),
      (d.errors / seconds).toFixed(1),
      fmtTime(d.count ? d.totalNs / d.count / 1e9 : 0),
      fmtTime(quantile(d.latencyLog2Ns, 0.99)),
    ]);
  }
  const total = ops.reduce((a, [, d]) => a + d.count, 0);
  return [
    `fusekit top ${mountpoint} — ${(total / seconds).toFixed(0)} requests/s over ${seconds}s (${cur.transport})`,
    '',
    rows.length > 1 ? table(rows) : '(idle)',
  ].join('\n');
}

export async function topCommand(
  mountpoint: string,
  intervalSeconds: number,
  iterations: number,
): Promise<void> {
  let prev = (await controlRequest(mountpoint, { cmd: 'stats' })).stats as NativeStats;
  for (let i = 0; iterations === 0 || i < iterations; i++) {
    await new Promise((r) => setTimeout(r, intervalSeconds * 1000));
    const cur = (await controlRequest(mountpoint, { cmd: 'stats' })).stats as NativeStats;
    const screen = formatTop(mountpoint, prev, cur, intervalSeconds);
    process.stdout.write(process.stdout.isTTY ? `\x1b[H\x1b[2J${screen}\n` : `${screen}\n\n`);
    prev = cur;
  }
}

export function formatEvent(e: FsEvent): string {
  const t = new Date(e.time).toISOString().slice(11, 23);
  const target = e.path2 ? `${e.path} -> ${e.path2}` : e.path;
  return (
    `${t} ${e.kind === 'audit' ? 'AUDIT ' : ''}${e.op} ${target} uid=${e.uid} gid=${e.gid} pid=${e.pid} ` +
    `${e.result === 0 ? 'ok' : e.result}${e.denied ? ' (denied by rule)' : ''} ${fmtTime(e.latencyNs / 1e9)}`
  );
}

export async function traceCommand(
  mountpoint: string,
  options: {
    sample?: number;
    ops?: string[];
    errorsOnly?: boolean;
    json?: boolean;
    count?: number;
  },
): Promise<void> {
  let n = 0;
  const t = await controlTrace(mountpoint, options, (e) => {
    if (options.count && n >= options.count) return; // the rest of the last batch
    process.stdout.write((options.json ? JSON.stringify(e) : formatEvent(e)) + '\n');
    if (options.count && ++n >= options.count) t.stop();
  });
  const stop = (): void => t.stop();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  await t.done;
  process.off('SIGINT', stop);
  process.off('SIGTERM', stop);
}
