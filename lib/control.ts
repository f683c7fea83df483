/**
 * The control socket every mount exposes, so `fusekit stats|top|trace MOUNTPOINT` work for mounts
 * made by any fusekit process. It is a Unix socket named after the mount's device number (unique
 * while mounted, found from the mount point with a stat):
 *   /run/fusekit/<dev>.sock              when /run is writable (root), else
 *   $XDG_RUNTIME_DIR/fusekit/<dev>.sock, else <tmpdir>/fusekit-<uid>/<dev>.sock
 * The directory is 0700 and the socket 0600: only the mounting user may connect. A socket left by a
 * process that died is replaced by the next mount with that device; a mount removes the socket at
 * its end only if it is still its own (a new mount may have the device number already). The
 * protocol is
 * JSON lines: {"cmd":"stats"} | {"cmd":"metrics","openMetrics"?} | {"cmd":"invalidate","path"?} |
 * {"cmd":"trace","sample"?,"ops"?,"errorsOnly"?} (then {"ok":true} and one {"event","dropped"} per
 * line, trace and audit events, until the client hangs up; "dropped" counts the events this
 * client lost because it did not keep up). Served by the mounting process's JavaScript: control
 * plane only.
 */
import { randomBytes } from 'node:crypto';
import { type Stats, promises as fsp, lstatSync, unlinkSync } from 'node:fs';
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
  on(event: 'trace' | 'audit', fn: (e: FsEvent) => void): unknown;
  off(event: 'trace' | 'audit', fn: (e: FsEvent) => void): unknown;
}

async function socketDir(): Promise<string> {
  const candidates = ['/run/fusekit'];
  if (process.env.XDG_RUNTIME_DIR)
    candidates.push(path.join(process.env.XDG_RUNTIME_DIR, 'fusekit'));
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
  // Bound under a private name, made 0600, then renamed into place: the rename replaces a stale
  // socket of a process that died, and the socket is never reachable with looser permissions.
  // libuv unlinks a listening socket's path when it closes, which is then this private name (gone
  // since the rename), never a socket a later mount with the same device made at `file`.
  const tmp = path.join(
    path.dirname(file),
    `.${path.basename(file)}.${process.pid}.${randomBytes(6).toString('hex')}`,
  );
  let tracers = 0;
  const clients = new Set<net.Socket>();
  const server = net.createServer((sock) => {
    clients.add(sock);
    sock.on('close', () => clients.delete(sock));
    let buf = '';
    let onTrace: ((e: FsEvent) => void) | undefined;
    const send = (obj: unknown): void => {
      sock.write(JSON.stringify(obj) + '\n');
    };
    sock.on('close', () => {
      if (onTrace) {
        m.off('trace', onTrace);
        m.off('audit', onTrace);
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
                send({
                  ok: true,
                  mountpoint: m.mountpoint,
                  source: m.source,
                  transport: m.transport,
                  stats: m.stats(),
                });
                break;
              case 'metrics':
                send({
                  ok: true,
                  text: renderMetrics(
                    { mountpoint: m.mountpoint, stats: m.stats() },
                    { openMetrics: req.openMetrics === true },
                  ),
                });
                break;
              case 'invalidate':
                send({
                  ok: true,
                  sent: await m.invalidate(typeof req.path === 'string' ? req.path : undefined),
                });
                break;
              case 'trace': {
                if (onTrace) break;
                let dropped = 0;
                onTrace = (e) => {
                  // Never let a slow reader hold events in this process's memory.
                  if (sock.writableLength > 1 << 20) dropped++;
                  else send({ event: e, dropped });
                };
                // Audit events too: an operation that is audited is reported as an audit event
                // only, so a trace without them would miss it.
                m.on('trace', onTrace);
                m.on('audit', onTrace);
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
    server.listen(tmp, () => resolve());
  });
  let own: Stats;
  try {
    await fsp.chmod(tmp, 0o600);
    own = await fsp.lstat(tmp);
    await fsp.rename(tmp, file);
  } catch (e) {
    server.close();
    throw e;
  }
  server.address = () => file;
  server.unref(); // a control socket never keeps the process alive
  void m.closed.then(() => {
    server.close();
    removeIfOwn(file, own);
    // A client still connected (fusekit trace) would keep this process alive after its mount
    // ended, and wait forever itself: the end of the mount is the end of the conversation.
    for (const c of clients) {
      c.end();
      setTimeout(() => c.destroy(), 1000).unref(); // one that does not read what is left
    }
  });
  return server;
}

// Removes the socket at file if it is still the one this process made: the device number is free
// once the mount has ended, and a new mount may have put its socket there already. Synchronous
// on purpose: between the check and the unlink another process could still rename its socket in,
// and with two asynchronous calls that window is event-loop turns long (seen in tests), not the
// few microseconds of two system calls in a row.
function removeIfOwn(file: string, own: Stats): void {
  try {
    const st = lstatSync(file);
    if (st.ino === own.ino && st.dev === own.dev) unlinkSync(file);
  } catch {
    // gone already
  }
}

/** One request to the control socket of the mount at mountpoint. */
export async function controlRequest(
  mountpoint: string,
  req: Record<string, unknown>,
): Promise<Record<string, unknown>> {
  const file = await controlSocketPath(mountpoint).catch((e: unknown) => {
    throw FusekitError.from(e, `${mountpoint} cannot be reached`, mountpoint);
  });
  return new Promise((resolve, reject) => {
    const sock = net.createConnection(file);
    let buf = '';
    let connected = false;
    sock.on('error', (e: NodeJS.ErrnoException) =>
      reject(
        connected
          ? FusekitError.from(e, `the control socket of ${mountpoint} failed`, mountpoint)
          : new FusekitError(
              e.code === 'ENOENT' || e.code === 'ECONNREFUSED' ? 'ENOENT' : (e.code ?? 'EIO'),
              `${mountpoint} is not a fusekit mount with a control socket (${file})`,
              { path: mountpoint, cause: e },
            ),
      ),
    );
    // The serving process went away before answering: say so rather than wait forever.
    sock.on('close', () =>
      reject(
        new FusekitError('EIO', `the control socket of ${mountpoint} closed without an answer`),
      ),
    );
    sock.on('connect', () => {
      connected = true;
      sock.write(JSON.stringify(req) + '\n');
    });
    sock.on('data', (d) => {
      buf += d.toString('utf8');
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      sock.end();
      let res: Record<string, unknown>;
      try {
        res = JSON.parse(buf.slice(0, nl)) as Record<string, unknown>;
      } catch {
        reject(new FusekitError('EIO', `the control socket of ${mountpoint} sent a bad answer`));
        return;
      }
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
    sock.once('error', (e) =>
      reject(
        new FusekitError('ENOENT', `${mountpoint} has no control socket (${file})`, { cause: e }),
      ),
    );
  });
  sock.write(JSON.stringify({ cmd: 'trace', ...options }) + '\n');
  // The mount's process may go away (an unmount, a crash): that ends the trace, via 'close'.
  sock.on('error', () => undefined);
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
