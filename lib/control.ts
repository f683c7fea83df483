/**
 * The control socket every mount exposes, so `fusekit stats|top|trace MOUNTPOINT` work for mounts
 * made by any fusekit process. It is a Unix socket named after the mount's device number (unique
 * while mounted, found from the mount point with a stat):
 *   /run/fusekit/<dev>.sock              when /run is writable (root), else
 *   $XDG_RUNTIME_DIR/fusekit/<dev>.sock, else <tmpdir>/fusekit-<uid>/<dev>.sock
 * The directory is 0700 and the socket 0600: only the mounting user may connect. The protocol is
 * JSON lines: {"cmd":"stats"} | {"cmd":"metrics","openMetrics"?} | {"cmd":"invalidate","path"?} |
 * {"cmd":"trace","sample"?,"ops"?,"errorsOnly"?} (then one event per line until the client hangs
 * up; a client that does not keep up loses events, counted in the final line it never sees, and
 * in the mount's stats). Served by the mounting process's JavaScript: control plane only.
 */
import { promises as fsp } from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

import { FusekitError } from './errors';
import { renderMetrics } from './metrics';
import type { FsEvent, NativeStats } from './native';

/** The part of a Mount the control server needs. */
export interface Controllable {
  readonly mountpoint: string;
  readonly source: string;
  readonly closed: Promise<void>;
  readonly transport: string;
  stats(): NativeStats;
  invalidate(path?: string): Promise<number>;
  trace(options: { sample?: number; ops?: string[]; errorsOnly?: boolean } | false): void;
  on(event: 'trace', fn: (e: FsEvent) => void): unknown;
  off(event: 'trace', fn: (e: FsEvent) => void): unknown;
}

async function socketDir(): Promise<string> {
  const candidates = ['/run/fusekit'];
  if (process.env.XDG_RUNTIME_DIR) candidates.push(path.join(process.env.XDG_RUNTIME_DIR, 'fusekit'));
  candidates.push(path.join(os.tmpdir(), `fusekit-${process.getuid?.() ?? 0}`));
  for (const dir of candidates) {
    try {
      await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
      await fsp.access(dir, 2 /* W_OK */);
      return dir;
    } catch {
      // next
    }
  }
  throw new FusekitError('EACCES', 'no writable directory for control sockets');
}

/** Where the control socket of the mount at mountpoint is (or would be). */
export async function controlSocketPath(mountpoint: string): Promise<string> {
  const st = await fsp.stat(mountpoint);
  return path.join(await socketDir(), `${st.dev}.sock`);
}

/** Starts serving a mount's control socket; closed with the mount. */
export async function serveControl(m: Controllable): Promise<net.Server> {
  const file = await controlSocketPath(m.mountpoint);
  await fsp.rm(file, { force: true });  // a stale socket of an earlier mount with this device
  let tracers = 0;
  const server = net.createServer((sock) => {
    let buf = '';
    let onTrace: ((e: FsEvent) => void) | undefined;
    const send = (obj: unknown): void => {
      sock.write(JSON.stringify(obj) + '\n');
    };
    sock.on('close', () => {
      if (onTrace) {
        m.off('trace', onTrace);
        if (--tracers === 0) m.trace(false);
      }
    });
    sock.on('error', () => undefined);
    sock.on('data', (d) => {
      buf += d.toString('utf8');
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        let req: Record<string, unknown>;
        try {
          req = JSON.parse(line) as Record<string, unknown>;
        } catch {
          send({ ok: false, error: 'bad request' });
          continue;
        }
        void (async () => {
          try {
            switch (req.cmd) {
              case 'stats':
                send({ ok: true, mountpoint: m.mountpoint, source: m.source, transport: m.transport, stats: m.stats() });
                break;
              case 'metrics':
                send({ ok: true, text: renderMetrics({ mountpoint: m.mountpoint, stats: m.stats() }, { openMetrics: req.openMetrics === true }) });
                break;
              case 'invalidate':
                send({ ok: true, sent: await m.invalidate(typeof req.path === 'string' ? req.path : undefined) });
                break;
              case 'trace': {
                if (onTrace) break;
                let dropped = 0;
                onTrace = (e) => {
                  // Never let a slow reader hold events in this process's memory.
                  if (sock.writableLength > 1 << 20) dropped++;
                  else send({ event: e, dropped });
                };
                m.on('trace', onTrace);
                tracers++;
                m.trace({
                  ...(typeof req.sample === 'number' ? { sample: req.sample } : {}),
                  ...(Array.isArray(req.ops) ? { ops: req.ops as string[] } : {}),
                  errorsOnly: req.errorsOnly === true,
                });
                send({ ok: true });
                break;
              }
              default:
                send({ ok: false, error: `unknown command ${String(req.cmd)}` });
            }
          } catch (e) {
            send({ ok: false, error: (e as Error).message });
          }
        })();
      }
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(file, () => resolve());
  });
  await fsp.chmod(file, 0o600);
  server.unref();  // a control socket never keeps the process alive
  void m.closed.then(() => {
    server.close();
    void fsp.rm(file, { force: true });
  });
  return server;
}

/** One request to the control socket of the mount at mountpoint. */
export async function controlRequest(mountpoint: string, req: Record<string, unknown>): Promise<Record<string, unknown>> {
  const file = await controlSocketPath(mountpoint).catch((e: unknown) => {
    throw FusekitError.from(e, `${mountpoint} cannot be reached`, mountpoint);
  });
  return new Promise((resolve, reject) => {
    const sock = net.createConnection(file);
    let buf = '';
    sock.on('error', (e: NodeJS.ErrnoException) =>
      reject(new FusekitError(e.code === 'ENOENT' || e.code === 'ECONNREFUSED' ? 'ENOENT' : (e.code ?? 'EIO'),
        `${mountpoint} is not a fusekit mount with a control socket (${file})`, { path: mountpoint, cause: e })),
    );
    sock.on('connect', () => sock.write(JSON.stringify(req) + '\n'));
    sock.on('data', (d) => {
      buf += d.toString('utf8');
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      sock.end();
      const res = JSON.parse(buf.slice(0, nl)) as Record<string, unknown>;
      if (res.ok === false) reject(new FusekitError('EIO', String(res.error)));
      else resolve(res);
    });
  });
}

/** Streams trace events of the mount at mountpoint until the returned stop() is called. */
export async function controlTrace(
  mountpoint: string,
  options: { sample?: number; ops?: string[]; errorsOnly?: boolean },
  onEvent: (e: FsEvent, dropped: number) => void,
): Promise<{ stop: () => void; done: Promise<void> }> {
  const file = await controlSocketPath(mountpoint);
  const sock = net.createConnection(file);
  await new Promise<void>((resolve, reject) => {
    sock.once('connect', resolve);
    sock.once('error', (e) => reject(new FusekitError('ENOENT', `${mountpoint} has no control socket (${file})`, { cause: e })));
  });
  sock.write(JSON.stringify({ cmd: 'trace', ...options }) + '\n');
  let buf = '';
  sock.on('data', (d) => {
    buf += d.toString('utf8');
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const msg = JSON.parse(buf.slice(0, nl)) as { event?: FsEvent; dropped?: number };
      buf = buf.slice(nl + 1);
      if (msg.event) onEvent(msg.event, msg.dropped ?? 0);
    }
  });
  const done = new Promise<void>((resolve) => sock.on('close', () => resolve()));
  return { stop: () => sock.end(), done };
}
