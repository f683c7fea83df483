/**
 * Mount statistics in the Prometheus text exposition format (or OpenMetrics), named by the
 * Prometheus conventions: counters end in _total, durations are seconds, sizes are bytes.
 */
import type { NativeStats } from './native';

export interface MetricsSource {
  mountpoint: string;
  stats: NativeStats;
}

function esc(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

function labels(l: Record<string, string>): string {
  const parts = Object.entries(l).map(([k, v]) => `${k}="${esc(v)}"`);
  return parts.length ? `{${parts.join(',')}}` : '';
}

// Collects samples by family and writes each family as one group (HELP, TYPE, then all of its
// samples, of every mount): the exposition formats require it, and the renderer below visits
// families interleaved (per operation, per mount).
class Writer {
  #families = new Map<string, { header: string[]; samples: string[] }>();
  constructor(private readonly openMetrics: boolean) {}
  family(name: string, type: 'counter' | 'gauge' | 'histogram', help: string): void {
    if (this.#families.has(name)) return;
    // OpenMetrics names counter families without _total.
    const fam = this.openMetrics && type === 'counter' ? name.replace(/_total$/, '') : name;
    this.#families.set(name, {
      header: [`# HELP ${fam} ${help}`, `# TYPE ${fam} ${type}`],
      samples: [],
    });
  }
  sample(family: string, name: string, l: Record<string, string>, value: number): void {
    const f = this.#families.get(family);
    if (!f) throw new Error(`metrics: sample ${name} of undeclared family ${family}`);
    f.samples.push(`${name}${labels(l)} ${Number.isFinite(value) ? value : 0}`);
  }
  lines(): string[] {
    const out: string[] = [];
    for (const f of this.#families.values()) out.push(...f.header, ...f.samples);
    return out;
  }
}

/** Renders one or more mounts' statistics; each series carries a mountpoint label. */
export function renderMetrics(
  sources: MetricsSource | MetricsSource[],
  options: { openMetrics?: boolean } = {},
): string {
  const all = Array.isArray(sources) ? sources : [sources];
  const w = new Writer(options.openMetrics ?? false);
  const counter = (name: string, help: string, l: Record<string, string>, v: number): void => {
    w.family(name, 'counter', help);
    w.sample(name, name, l, v);
  };
  const gauge = (name: string, help: string, l: Record<string, string>, v: number): void => {
    w.family(name, 'gauge', help);
    w.sample(name, name, l, v);
  };
  const hist = 'fusekit_request_duration_seconds';
  for (const { mountpoint, stats: s } of all) {
    const m = { mountpoint };
    for (const [op, c] of Object.entries(s.ops)) {
      const l = { ...m, op };
      counter('fusekit_requests_total', 'FUSE requests served, by operation.', l, c.count);
      for (const [errno, n] of Object.entries(c.errnos))
        counter(
          'fusekit_request_errors_total',
          'Failed requests, by operation and errno.',
          { ...l, errno },
          n,
        );
      // log2 nanosecond buckets become cumulative "le" buckets in seconds.
      w.family(hist, 'histogram', 'Time to serve a request, by operation.');
      let cum = 0;
      c.latencyLog2Ns.forEach((n, i) => {
        cum += n;
        const le = i === c.latencyLog2Ns.length - 1 ? '+Inf' : String(2 ** (i + 1) / 1e9);
        w.sample(hist, `${hist}_bucket`, { ...l, le }, cum);
      });
      w.sample(hist, `${hist}_sum`, l, c.totalNs / 1e9);
      w.sample(hist, `${hist}_count`, l, c.count);
    }
    counter(
      'fusekit_transport_requests_total',
      'Requests by the transport that carried them.',
      { ...m, transport: 'io_uring' },
      s.requests.ioUring,
    );
    counter(
      'fusekit_transport_requests_total',
      'Requests by the transport that carried them.',
      { ...m, transport: 'dev' },
      s.requests.dev,
    );
    counter(
      'fusekit_daemon_read_bytes_total',
      'Bytes read by the daemon itself (not passthrough).',
      m,
      s.daemonBytes.read,
    );
    counter(
      'fusekit_daemon_written_bytes_total',
      'Bytes written by the daemon itself (not passthrough).',
      m,
      s.daemonBytes.written,
    );
    counter(
      'fusekit_passthrough_opens_total',
      'Opens answered with a kernel passthrough backing file.',
      m,
      s.passthrough.opens,
    );
    counter(
      'fusekit_passthrough_direct_opens_total',
      'Passthrough opens whose I/O the daemon serves.',
      m,
      s.passthrough.directOpens,
    );
    counter(
      'fusekit_cached_opens_total',
      'Opens served through the page cache by the daemon.',
      m,
      s.passthrough.cachedOpens,
    );
    counter(
      'fusekit_passthrough_failures_total',
      'Backing file registrations the kernel refused.',
      m,
      s.passthrough.failures,
    );
    gauge(
      'fusekit_passthrough_backing_files',
      'Backing files registered now.',
      m,
      s.passthrough.backingActive,
    );
    gauge('fusekit_inodes', 'Inodes the kernel holds references to.', m, s.inodes);
    gauge(
      'fusekit_inode_memory_bytes',
      'Estimated daemon memory for those inodes.',
      m,
      s.inodeMemory,
    );
    counter(
      'fusekit_cache_invalidations_total',
      'Cache invalidations sent to the kernel.',
      m,
      s.cache.invalidations,
    );
    counter(
      'fusekit_cache_watch_overflows_total',
      'Watcher queue overflows (each invalidates everything).',
      m,
      s.cache.overflows,
    );
    counter(
      'fusekit_events_recorded_total',
      'Audit and trace events recorded.',
      m,
      s.events.recorded,
    );
    counter(
      'fusekit_events_dropped_total',
      'Events dropped because the consumer fell behind.',
      m,
      s.events.dropped,
    );
  }
  const lines = w.lines();
  if (options.openMetrics) lines.push('# EOF');
  return lines.join('\n') + '\n';
}

/** Content type to serve the rendering with. */
export function metricsContentType(openMetrics = false): string {
  return openMetrics
    ? 'application/openmetrics-text; version=1.0.0; charset=utf-8'
    : 'text/plain; version=0.0.4; charset=utf-8';
}
